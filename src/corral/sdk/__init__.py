"""The corral Python SDK: ``Sandbox`` (sync) and ``AsyncSandbox``, sharing one async core."""

from corral.sdk._async.commands import AsyncCommandHandle, AsyncCommands
from corral.sdk._async.files import AsyncFilesystem
from corral.sdk._async.sandbox import AsyncSandbox
from corral.sdk._sync.commands import CommandHandle, Commands
from corral.sdk._sync.files import Filesystem
from corral.sdk._sync.sandbox import Sandbox
from corral.sdk.config import ConnectionConfig
from corral.sdk.models import CommandResult, CommandTimeoutError, EntryInfo, ProcessInfo, SandboxInfo

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFilesystem",
    "AsyncSandbox",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "Commands",
    "ConnectionConfig",
    "EntryInfo",
    "Filesystem",
    "ProcessInfo",
    "Sandbox",
    "SandboxInfo",
]
