"""The corral Python SDK: ``Sandbox`` (sync) and ``AsyncSandbox``, sharing one async core."""

from corral.sdk._async.commands import AsyncCommandHandle, AsyncCommands
from corral.sdk._async.files import AsyncFilesystem, AsyncWatchHandle
from corral.sdk._async.pty import AsyncPty, AsyncPtyHandle
from corral.sdk._async.sandbox import AsyncSandbox
from corral.sdk._async.secrets import AsyncSecrets
from corral.sdk._async.templates import AsyncTemplate
from corral.sdk._sync.commands import CommandHandle, Commands
from corral.sdk._sync.files import Filesystem, WatchHandle
from corral.sdk._sync.pty import Pty, PtyHandle
from corral.sdk._sync.sandbox import Sandbox
from corral.sdk._sync.secrets import Secrets
from corral.sdk._sync.templates import Template
from corral.sdk.config import ConnectionConfig
from corral.sdk.execution import CodeContext, Execution, ExecutionError, Logs, OutputMessage, Result
from corral.sdk.models import (
    BackendInfo,
    BuildInfo,
    BuildResult,
    CommandResult,
    CommandTimeoutError,
    EntryInfo,
    FilesystemEvent,
    NetworkInfo,
    PortInfo,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SecretInfo,
    TemplateInfo,
)

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFilesystem",
    "AsyncPty",
    "AsyncPtyHandle",
    "AsyncSandbox",
    "AsyncSecrets",
    "AsyncTemplate",
    "AsyncWatchHandle",
    "BackendInfo",
    "BuildInfo",
    "BuildResult",
    "CodeContext",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "Commands",
    "ConnectionConfig",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "Filesystem",
    "FilesystemEvent",
    "Logs",
    "NetworkInfo",
    "OutputMessage",
    "PortInfo",
    "ProcessInfo",
    "Pty",
    "PtyHandle",
    "PtySize",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SecretInfo",
    "Secrets",
    "Template",
    "TemplateInfo",
    "WatchHandle",
]
