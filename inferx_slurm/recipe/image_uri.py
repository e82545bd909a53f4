"""Container image references: the forms a recipe may name, normalized, and the file name an
image gets in the shared image dir. Pure: the import itself is `sharedfs.images`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from inferx_slurm.errors import InferxError

_VALID_FORMS = (
    "expected REGISTRY/IMAGE:TAG (nvcr.io/nvidia/pytorch:25.01-py3), "
    "docker://REGISTRY#IMAGE:TAG, a Docker Hub IMAGE:TAG (nginx:1.27.4), "
    "any of these pinned with @sha256:<64 hex digits>, or a local /path/to/image.sqsh"
)
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_LOCAL_SUFFIXES = (".sqsh", ".squashfs")

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY_RE = re.compile(rf"(?:{_HOST_LABEL})(?:\.{_HOST_LABEL})*(?::[0-9]{{1,5}})?")
_USER_RE = re.compile(r"[A-Za-z0-9_.!~*'()%;:&=+$,-]+")
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
# IMAGE[:TAG][:ALG:HEX | @ALG:HEX]; the enroot spelling puts the digest where the tag goes.
_REF_RE = re.compile(
    r"(?P<path>[^:@]+)(?::(?P<tag>[^:@]+))?"
    r"(?::(?P<alg>sha256|sha512):(?P<hex>[^:@]*)|@(?P<alg2>[^:@]*):?(?P<hex2>[^:@]*))?"
)


class InvalidImageURI(InferxError, ValueError):
    """The image reference cannot be understood; nothing was imported."""

    exit_code = 2

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        self.reason = reason
        super().__init__(f"invalid container image {uri!r}: {reason}; {_VALID_FORMS}")




@dataclass(frozen=True)
class _Ref:
    scheme: str
    user: str | None
    registry: str | None  # None: Docker Hub
    path: str
    tag: str | None
    digest: str | None
    raw: str

    def key(self) -> str:
        # Identity of the image contents: credentials and spelling variants do not matter.
        if self.scheme != "docker":
            return f"{self.scheme}/{self.raw}"
        registry = self.registry or "docker.io"
        path = _hub_path(self.path) if self.registry is None else self.path
        return f"{registry}/{path}" + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")


def _hub_path(path: str) -> str:
    return path if "/" in path else f"library/{path}"


def is_local_image(uri: str) -> bool:
    """True if ``uri`` names a squashfs file rather than a registry image."""
    text = uri.strip()
    return "://" not in text and "#" not in text and text.endswith(_LOCAL_SUFFIXES)


def _parse(uri: str) -> _Ref:
    if not isinstance(uri, str):
        raise InvalidImageURI(repr(uri), "not a string")
    text = uri.strip()
    if not text:
        raise InvalidImageURI(uri, "empty")
    if any(c.isspace() for c in text):
        raise InvalidImageURI(uri, "contains whitespace")
    scheme = "docker"
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in ("docker", "dockerd", "podman"):
            raise InvalidImageURI(uri, f"unsupported scheme {scheme + '://'!r} (use docker://)")
    if not text:
        raise InvalidImageURI(uri, "no image name")
    raw = text

    user = registry = None
    if "#" in text:
        if scheme != "docker":
            raise InvalidImageURI(uri, f"{scheme}:// images take no REGISTRY# part")
        left, _, text = text.partition("#")
        if "#" in text:
            raise InvalidImageURI(uri, "more than one '#'")
        if "@" in left:
            user, left = left.rsplit("@", 1)
            if not _USER_RE.fullmatch(user):
                raise InvalidImageURI(uri, f"bad user {user!r} before '@'")
        if not _REGISTRY_RE.fullmatch(left):
            raise InvalidImageURI(uri, f"bad registry {left!r} before '#'")
        registry = left
    else:
        first, slash, rest = text.partition("/")
        # Docker's rule: a first component with a dot or port, or 'localhost', is a registry.
        if slash and ("." in first or ":" in first or first == "localhost"):
            if not _REGISTRY_RE.fullmatch(first):
                raise InvalidImageURI(uri, f"bad registry {first!r}")
            registry, text = first, rest
    if registry is not None and registry.lower() in _DOCKER_HUB:
        registry = None

    m = _REF_RE.fullmatch(text)
    if not m:
        raise InvalidImageURI(uri, f"cannot split {text!r} into IMAGE[:TAG][@sha256:DIGEST]")
    path, tag = m["path"], m["tag"]
    if m["alg"] is not None:
        digest = f"{m['alg']}:{m['hex']}"
    elif m["alg2"] is not None:
        digest = f"{m['alg2']}:{m['hex2']}"
    else:
        digest = None
    for component in path.split("/"):
        if not _COMPONENT_RE.fullmatch(component):
            raise InvalidImageURI(
                uri, f"bad image name component {component!r} (lowercase letters, digits, '.', '_', '-')"
            )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise InvalidImageURI(uri, f"bad tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)")
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        raise InvalidImageURI(uri, f"bad digest {digest!r} (sha256: followed by 64 lowercase hex digits)")
    if scheme != "docker" and digest is not None:
        raise InvalidImageURI(uri, f"{scheme}:// images cannot be pinned by digest")
    return _Ref(scheme, user, registry, path, tag, digest, raw=raw)


def normalize_image_uri(uri: str) -> str:
    """Return the spelling of ``uri`` that ``enroot import`` accepts.

    ``nvcr.io/nvidia/x:tag`` and ``docker://nvcr.io/nvidia/x:tag`` become
    ``docker://nvcr.io#nvidia/x:tag``; Docker Hub names stay short (``docker://nginx:1.27.4``);
    a digest replaces the tag in enroot's ``IMAGE:sha256:HEX`` spelling, which enroot 3.x
    understands where ``tag@sha256:HEX`` is a parse error; a local ``.sqsh`` path is returned
    unchanged.  Raises :class:`InvalidImageURI` (a ``ValueError``) for anything else.
    """
    if isinstance(uri, str) and is_local_image(uri):
        return uri.strip()
    ref = _parse(uri)
    if ref.scheme != "docker":
        # Local daemon images (dockerd://, podman://) are named as the daemon knows them.
        return f"{ref.scheme}://{ref.raw}"
    user = f"{ref.user}@" if ref.user else ""
    if ref.digest:
        path = _hub_path(ref.path) if ref.registry is None else ref.path
        suffix = f":{ref.digest}"
    else:
        path = ref.path
        suffix = f":{ref.tag}" if ref.tag else ""
    registry = f"{ref.registry}#" if ref.registry else ""
    first = path.split("/", 1)[0]
    if not registry and "/" in path and ("." in first or first == "localhost"):
        # A Docker Hub path whose first part looks like a host would read back as a registry.
        registry = "registry-1.docker.io#"
    return f"docker://{user}{registry}{path}{suffix}"


def image_file_name(uri: str) -> str:
    """The file name an image gets in the shared image dir: readable, and unique per image.

    Spellings of one image (with or without ``docker://``, ``docker.io/library/``, a user
    name) share one name; a digest-pinned image is named by its digest, not its tag.
    """
    if isinstance(uri, str) and is_local_image(uri):
        return Path(uri.strip()).name
    key = _parse(uri).key()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "+", key)[:120]
    # The readable part is lossy ('/' and ':' both map to '+'), so a hash keeps names apart.
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.sqsh"


# -- squashfs checks ----------------------------------------------------------------------


def image_digest(uri: str) -> str | None:
    """The digest a registry reference is pinned to, if any (None for a local .sqsh)."""
    return None if is_local_image(uri) else _parse(uri).digest
