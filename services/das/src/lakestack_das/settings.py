from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import DAS, ServiceInfo


class DasSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = DAS
