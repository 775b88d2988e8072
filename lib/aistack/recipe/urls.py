"""Which recipe values are URLs, and URLs that carry credentials (refused: jobs take
credentials from their environment, never from a recipe)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from aistack.recipe.errors import SecretValue

# Query parameters of presigned URLs and tokens: credentials in disguise.
_SECRET_QUERY = ("x-amz-credential", "x-amz-signature", "x-amz-security-token", "awsaccesskeyid", "signature",
                 "sig", "token", "access_token")


def is_url(path: str) -> bool:
    """True for `scheme://...` other than file://."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", str(path))
    return bool(match) and match.group(1).lower() != "file"


def check_no_credentials(value: str) -> str:
    """Refuse a URL holding credentials; the message never repeats them."""
    if not is_url(value):
        return value
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise SecretValue(f"a {parts.scheme}:// URL without credentials (user:secret@ in the URL is refused; "
                         "jobs take credentials from their environment, e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    keys = {q.split("=", 1)[0].lower() for q in parts.query.split("&") if q}
    if keys & set(_SECRET_QUERY):
        raise SecretValue(f"a {parts.scheme}:// URL without credentials (a signed or token query is refused; "
                         "jobs take credentials from their environment)")
    return value

