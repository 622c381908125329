"""Local dev stack: starts, health-checks and stops real Kafka, Milvus, Triton and MinIO servers.

Used by ``make up``/``make down``, the demo, the tests and the benchmarks. Product code never
imports this package.
"""

from __future__ import annotations

from devstack.exceptions import FetchError, ServerError
from devstack.httpfault import HttpFaultProxy
from devstack.kafka import KafkaServer
from devstack.milvus import MilvusServer
from devstack.minio import MinioServer
from devstack.process import ServerProcess, free_port
from devstack.proxy import TcpProxy
from devstack.triton import TritonServer

__all__ = [
    "FetchError",
    "HttpFaultProxy",
    "KafkaServer",
    "MilvusServer",
    "MinioServer",
    "ServerError",
    "ServerProcess",
    "TcpProxy",
    "TritonServer",
    "free_port",
]
