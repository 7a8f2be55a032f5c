"""corral: self-hosted sandboxes for AI-generated code.

    from corral import Sandbox

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hello").stdout)

This module imports only the SDK and the error tree: it works on any platform, without the
server's dependencies.
"""

from importlib.metadata import PackageNotFoundError, version

from corral.errors import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    ContextNotFoundError,
    CorralError,
    FileExistsError_,
    FileNotFoundError_,
    InvalidRequestError,
    IsADirectoryError_,
    KernelFailedError,
    LimitExceededError,
    NotADirectoryError_,
    NotFoundError,
    NotSupportedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProcessNotFoundError,
    SandboxFailedError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SecretNotFoundError,
    TemplateNotFoundError,
    TimeoutError_,
    UnavailableError,
)
from corral.sdk import (
    AsyncSandbox,
    AsyncSecrets,
    CodeContext,
    CommandHandle,
    CommandResult,
    CommandTimeoutError,
    EntryInfo,
    Execution,
    ExecutionError,
    Logs,
    OutputMessage,
    ProcessInfo,
    PtyHandle,
    PtySize,
    Result,
    Sandbox,
    SandboxInfo,
    SecretInfo,
    Secrets,
)

try:
    __version__ = version("corral")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# The E2B-style names; they shadow the builtins only inside this namespace.
TimeoutError = TimeoutError_
FileNotFoundError = FileNotFoundError_
FileExistsError = FileExistsError_
NotADirectoryError = NotADirectoryError_
IsADirectoryError = IsADirectoryError_

__all__ = [
    "AsyncSandbox",
    "AsyncSecrets",
    "AuthenticationError",
    "CodeContext",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "ConflictError",
    "ContextNotFoundError",
    "CorralError",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileExistsError",
    "FileNotFoundError",
    "InvalidRequestError",
    "IsADirectoryError",
    "KernelFailedError",
    "LimitExceededError",
    "Logs",
    "NotADirectoryError",
    "NotFoundError",
    "NotSupportedError",
    "OutputMessage",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "ProcessNotFoundError",
    "PtyHandle",
    "PtySize",
    "Result",
    "Sandbox",
    "SandboxFailedError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SecretInfo",
    "SecretNotFoundError",
    "Secrets",
    "TemplateNotFoundError",
    "TimeoutError",
    "UnavailableError",
    "__version__",
]
