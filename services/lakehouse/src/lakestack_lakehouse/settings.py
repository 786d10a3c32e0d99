from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import LAKEHOUSE, ServiceInfo


class LakehouseSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = LAKEHOUSE
