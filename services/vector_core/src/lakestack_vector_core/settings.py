from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import VECTOR_CORE, ServiceInfo


class VectorCoreSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = VECTOR_CORE
