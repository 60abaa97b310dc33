"""What every request handler of one gateway process shares."""

from __future__ import annotations

from dataclasses import dataclass

from apps.gateway.auth import ClientPool
from apps.gateway.metrics import GatewayMetrics
from apps.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    pool: ClientPool
    metrics: GatewayMetrics
