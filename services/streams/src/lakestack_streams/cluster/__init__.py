"""Everything that involves more than one streams node: membership and placement, routing to the
owner, authority overrides, replication to secondaries, failover, transfer and rebalancing."""
