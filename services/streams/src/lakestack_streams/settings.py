from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import STREAMS, ServiceInfo


class StreamsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = STREAMS
