"""The Iceberg catalog the service manages, and table names as users write them.

One code path for every catalog pyiceberg supports: the embedded default is a SQL catalog on
SQLite with a local warehouse; REST, Glue, Hive, Nessie... (and S3/MinIO warehouses) come from
the configuration (``ConfigService``), whose ``props`` are pyiceberg catalog properties. Keys
starting with ``lakestack.`` are the service's own settings (thresholds, agent defaults) and are
not passed to pyiceberg.

Table names are accepted as ``ns.table``, ``ns1.ns2.table`` and ``<catalog>.ns.table``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from lakestack_common.errors import InvalidArgument, NotFound, Unavailable
from lakestack_common.topology import lakehouse_catalog

SERVICE_PREFIX = "lakestack."


@dataclass(frozen=True)
class CatalogConfig:
    catalog_type: str = "sql"
    catalog_name: str = "lakestack"
    uri: str = ""
    warehouse: str = ""
    props: dict[str, str] = field(default_factory=dict)

    def pyiceberg_properties(self) -> dict[str, str]:
        properties = {k: v for k, v in self.props.items() if not k.startswith(SERVICE_PREFIX)}
        properties["type"] = self.catalog_type
        if self.uri:
            properties["uri"] = self.uri
        if self.warehouse:
            properties["warehouse"] = self.warehouse
        return properties

    def setting(self, key: str, default: str = "") -> str:
        """A service setting kept in props (``lakestack.<key>``)."""
        return self.props.get(SERVICE_PREFIX + key, default)


def default_config(data_dir: Path, catalog_uri: str = "", warehouse: str = "") -> CatalogConfig:
    default_uri, default_warehouse = lakehouse_catalog(data_dir)
    return CatalogConfig(uri=catalog_uri or default_uri, warehouse=warehouse or default_warehouse)


def open_catalog(config: CatalogConfig) -> Catalog:
    """Connect (a bad configuration is INVALID_ARGUMENT, an unreachable catalog UNAVAILABLE)."""
    if config.warehouse.startswith("file://"):
        Path(config.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if config.uri.startswith("sqlite:///"):
        Path(config.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        catalog = load_catalog(config.catalog_name, **config.pyiceberg_properties())
    except (ValueError, TypeError, ImportError, NotImplementedError) as exc:
        raise InvalidArgument(f"catalog configuration rejected: {exc}") from exc
    except OSError as exc:
        raise Unavailable(f"catalog unreachable: {exc}") from exc
    return catalog


class Catalogs:
    """The active catalog (rebuilt when the configuration changes) and name resolution.

    Synchronous: callers run it on a worker thread (pyiceberg does blocking I/O)."""

    def __init__(self, config: CatalogConfig) -> None:
        self._config = config
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()

    @property
    def config(self) -> CatalogConfig:
        return self._config

    def replace(self, config: CatalogConfig, catalog: Catalog | None = None) -> None:
        with self._lock:
            self._config = config
            self._catalog = catalog

    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._catalog = open_catalog(self._config)
            return self._catalog

    def identifier(self, name: str) -> tuple[str, ...]:
        parts = tuple(p.strip() for p in name.strip().split("."))
        if any(not p for p in parts) or len(parts) < 2:
            raise InvalidArgument(f"table name {name!r}: expected <namespace>.<table>")
        if len(parts) >= 3 and parts[0] == self._config.catalog_name:
            parts = parts[1:]
        return parts

    def load_table(self, name: str) -> Table:
        identifier = self.identifier(name)
        try:
            return self.catalog().load_table(identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            raise NotFound(f"table {'.'.join(identifier)} does not exist") from None

    def create_table(self, name: str, schema: pa.Schema) -> Table:
        """A new table (its namespace created if needed), for pipelines that create their sink."""
        identifier = self.identifier(name)
        catalog = self.catalog()
        catalog.create_namespace_if_not_exists(identifier[:-1])
        return catalog.create_table(identifier, schema=schema)

    def list_tables(self, namespace: str = "") -> tuple[list[str], list[str]]:
        """(namespaces, tables) under ``namespace`` (all when empty), nested namespaces included."""
        catalog = self.catalog()
        root: tuple[str, ...] = tuple(namespace.split(".")) if namespace else ()
        namespaces: list[str] = []
        tables: list[str] = []
        pending = [root] if root else [tuple(ns) for ns in catalog.list_namespaces()]
        if root:
            try:
                catalog.load_namespace_properties(root)
            except NoSuchNamespaceError:
                raise NotFound(f"namespace {namespace} does not exist") from None
        seen: set[tuple[str, ...]] = set()
        while pending:
            current = pending.pop(0)
            if current in seen:
                continue
            seen.add(current)
            namespaces.append(".".join(current))
            tables.extend(".".join(t) for t in catalog.list_tables(current))
            try:
                children = [tuple(ns) for ns in catalog.list_namespaces(current)]
            except (NoSuchNamespaceError, NotImplementedError):
                children = []
            pending.extend(c for c in children if c != current and c not in seen)
        return sorted(namespaces), sorted(tables)
