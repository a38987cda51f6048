"""The one way every process connects to Temporal: same address, namespace and converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from domain.config import Settings


def tls_config(settings: Settings) -> TLSConfig | bool:
    """The TLS options of `temporal_tls` (False: plain, the embedded dev server)."""
    tls = settings.temporal_tls
    if tls is None:
        return False

    def read(path) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return TLSConfig(
        server_root_ca_cert=read(tls.server_ca_file),
        client_cert=read(tls.client_cert_file),
        client_private_key=read(tls.client_key_file),
        domain=tls.server_name,
    )


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """``runtime``: one with telemetry (worker/metrics.py); None, the SDK's default."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls_config(settings),
        runtime=runtime,
    )


async def ensure_search_attributes(client: Client, namespace: str = "default") -> None:
    """Register the notebook search attributes where the server does not know them yet
    (the dev server gets them on its command line; other servers through this)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )

    from domain import search_attributes as sa

    types = {
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    }
    from temporalio.service import RPCError, RPCStatusCode

    try:
        known = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        registered = set(known.custom_attributes)
    except RPCError as err:
        if err.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server
            raise
        registered = set()
    missing = {name: types[kind] for name, kind in sa.DEFINITIONS.items() if name not in registered}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
