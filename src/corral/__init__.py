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
    BuildContextError,
    BuildFailedError,
    BuildNotFoundError,
    CommandExitError,
    ConflictError,
    ContextNotFoundError,
    CorralError,
    DockerfileError,
    FileExistsError_,
    FileNotFoundError_,
    ImageNotFoundError,
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
    RegistryError,
    SandboxFailedError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SecretNotFoundError,
    TemplateInUseError,
    TemplateNotFoundError,
    TimeoutError_,
    UnavailableError,
    UnsupportedInstructionError,
)
from corral.sdk import (
    AsyncSandbox,
    AsyncSecrets,
    AsyncTemplate,
    BuildResult,
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
    Template,
    TemplateInfo,
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
    "AsyncTemplate",
    "AuthenticationError",
    "BuildContextError",
    "BuildFailedError",
    "BuildNotFoundError",
    "BuildResult",
    "CodeContext",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "CommandTimeoutError",
    "ConflictError",
    "ContextNotFoundError",
    "CorralError",
    "DockerfileError",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileExistsError",
    "FileNotFoundError",
    "ImageNotFoundError",
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
    "RegistryError",
    "Result",
    "Sandbox",
    "SandboxFailedError",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SecretInfo",
    "SecretNotFoundError",
    "Secrets",
    "Template",
    "TemplateInUseError",
    "TemplateInfo",
    "TemplateNotFoundError",
    "TimeoutError",
    "UnavailableError",
    "UnsupportedInstructionError",
    "__version__",
]
