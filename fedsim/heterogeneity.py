"""Client system profiles and the simulated clock.

A client's round time is latency + bytes_down/downlink + work/speed + bytes_up/uplink
(the FedScale form, ALGORITHMS.md section 8), where work is the number of training
examples it actually processed and bytes are those of its actual messages. With
the wait-for-all policy a round lasts as long as its slowest client.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SystemConfig(BaseModel):
    """The `[system]` table: one profile shared by every client."""

    model_config = ConfigDict(extra="forbid")

    speed: float = Field(5000.0, gt=0, description="training examples processed per second")
    uplink: float = Field(1.25e6, gt=0, description="bytes per second, client to server")
    downlink: float = Field(2.5e6, gt=0, description="bytes per second, server to client")
    latency_s: float = Field(0.05, ge=0, description="fixed per-round delay")


def client_round_time(cfg: SystemConfig, bytes_down: int, work: float, bytes_up: int) -> float:
    """Seconds one client needs for a round."""
    return cfg.latency_s + bytes_down / cfg.downlink + work / cfg.speed + bytes_up / cfg.uplink
