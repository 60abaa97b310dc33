"""Images named by URL in OpenAI requests: `data:` URLs are decoded; http(s) URLs are fetched only when
VITA_GATEWAY_ALLOW_REMOTE_IMAGES is set (off by default: the gateway is no open proxy into its network)."""

from __future__ import annotations

import asyncio
import urllib.request

from apps.gateway.audio import b64decode
from apps.gateway.errors import GatewayError
from apps.gateway.settings import GatewaySettings


def parse_data_url(url: str, param: str) -> tuple[str, bytes]:
    """`data:<mime>;base64,<data>` → (mime, bytes)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise GatewayError(f"{param} must be a data:<mime type>;base64,<data> URL", code="invalid_image_url",
                           param=param)
    return header[len("data:"): -len(";base64")], b64decode(payload, param)


async def image_bytes(url: object, param: str, settings: GatewaySettings, max_bytes: int) -> bytes:
    if not isinstance(url, str) or not url:
        raise GatewayError(f"{param} must be a URL string", code="invalid_image_url", param=param)
    if url.startswith("data:"):
        _, data = parse_data_url(url, param)
    elif url.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise GatewayError(
                f"{param}: http(s) image URLs are disabled on this server; send the image as a data: URL "
                "(or set VITA_GATEWAY_ALLOW_REMOTE_IMAGES=true)", code="remote_images_disabled", param=param)
        data = await asyncio.to_thread(_fetch, url, settings.remote_image_timeout_s, max_bytes, param)
    else:
        raise GatewayError(f"{param} must be a data: URL", code="invalid_image_url", param=param)
    if not data:
        raise GatewayError(f"{param} holds no image bytes", code="invalid_image_url", param=param)
    if len(data) > max_bytes:
        raise GatewayError(f"{param} is larger than {max_bytes} bytes", code="image_too_large", param=param)
    return data


def _fetch(url: str, timeout_s: float, max_bytes: int, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (scheme checked above)
            data = response.read(max_bytes + 1)
    except Exception as error:  # unreachable host, HTTP error, timeout: the URL is the client's
        raise GatewayError(f"{param}: the image could not be fetched ({type(error).__name__})",
                           code="image_fetch_failed", param=param) from None
    return data
