from typing import ClassVar

from lakestack_common.config import ServiceSettings
from lakestack_common.topology import TECKEL_JOBS, ServiceInfo


class TeckelJobsSettings(ServiceSettings):
    service: ClassVar[ServiceInfo] = TECKEL_JOBS
