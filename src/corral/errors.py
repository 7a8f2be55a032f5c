"""The one error tree shared by the server and the SDK.

Every error has a stable ``code`` (an API string that never changes) and an HTTP
``status``. The server renders any ``CorralError`` as ``{"code", "message"}`` with that
status; the SDK maps the body back to the same class with :func:`error_from_body`.

    CorralError                      500 internal
    ├── AuthenticationError          401 unauthorized
    ├── InvalidRequestError          400 invalid_request
    │   ├── PayloadTooLargeError     413 payload_too_large
    │   ├── NotSupportedError        400 not_supported      (e.g. run_code on a template without kernels)
    │   ├── DockerfileError          400 dockerfile_invalid     (details: line)
    │   ├── UnsupportedInstructionError 400 unsupported_instruction (details: instruction, line)
    │   └── BuildContextError        400 build_context_invalid  (COPY outside the context, ...)
    ├── NotFoundError                404 not_found
    │   ├── SandboxNotFoundError     404 sandbox_not_found
    │   ├── TemplateNotFoundError    404 template_not_found
    │   ├── FileNotFoundError_       404 file_not_found     (exported as corral.FileNotFoundError)
    │   ├── ProcessNotFoundError     404 process_not_found
    │   ├── ContextNotFoundError     404 context_not_found
    │   ├── SecretNotFoundError      404 secret_not_found
    │   ├── ImageNotFoundError       404 image_not_found    (FROM an OCI image the registry lacks)
    │   └── BuildNotFoundError       404 build_not_found
    ├── ConflictError                409 conflict
    │   ├── SandboxNotRunningError   409 sandbox_not_running
    │   ├── FileExistsError_         409 file_exists
    │   └── TemplateInUseError       409 template_in_use
    ├── PermissionDeniedError        403 permission_denied
    ├── NotADirectoryError_          400 not_a_directory
    ├── IsADirectoryError_           400 is_a_directory
    ├── LimitExceededError           429 limit_exceeded
    ├── SandboxFailedError           500 sandbox_failed
    ├── KernelFailedError            500 kernel_failed      (a code context's kernel did not start)
    ├── PortClosedError              502 port_closed        (nothing listens on a sandbox port)
    ├── BuildFailedError             422 build_failed       (a RUN step failed; details: step)
    ├── RegistryError                502 registry_error     (unreachable registry, failed pull)
    ├── UnavailableError             503 unavailable
    ├── TimeoutError_                504 timeout            (a command ran past its timeout)
    └── CommandExitError             --  command_exit       (SDK only: non-zero exit code)
"""

from __future__ import annotations

from typing import Any, ClassVar


class CorralError(Exception):
    """Base class of every corral error."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class AuthenticationError(CorralError):
    code, status = "unauthorized", 401


class InvalidRequestError(CorralError):
    code, status = "invalid_request", 400


class PayloadTooLargeError(InvalidRequestError):
    code, status = "payload_too_large", 413


class NotSupportedError(InvalidRequestError):
    code = "not_supported"


class DockerfileError(InvalidRequestError):
    code = "dockerfile_invalid"


class UnsupportedInstructionError(InvalidRequestError):
    code = "unsupported_instruction"


class BuildContextError(InvalidRequestError):
    code = "build_context_invalid"


class NotFoundError(CorralError):
    code, status = "not_found", 404


class SandboxNotFoundError(NotFoundError):
    code = "sandbox_not_found"


class TemplateNotFoundError(NotFoundError):
    code = "template_not_found"


class FileNotFoundError_(NotFoundError):
    code = "file_not_found"


class ProcessNotFoundError(NotFoundError):
    code = "process_not_found"


class ContextNotFoundError(NotFoundError):
    code = "context_not_found"


class SecretNotFoundError(NotFoundError):
    code = "secret_not_found"


class ImageNotFoundError(NotFoundError):
    code = "image_not_found"


class BuildNotFoundError(NotFoundError):
    code = "build_not_found"


class ConflictError(CorralError):
    code, status = "conflict", 409


class SandboxNotRunningError(ConflictError):
    code = "sandbox_not_running"


class FileExistsError_(ConflictError):
    code = "file_exists"


class TemplateInUseError(ConflictError):
    code = "template_in_use"


class PermissionDeniedError(CorralError):
    code, status = "permission_denied", 403


class NotADirectoryError_(CorralError):
    code, status = "not_a_directory", 400


class IsADirectoryError_(CorralError):
    code, status = "is_a_directory", 400


class LimitExceededError(CorralError):
    code, status = "limit_exceeded", 429


class SandboxFailedError(CorralError):
    code, status = "sandbox_failed", 500


class KernelFailedError(CorralError):
    code, status = "kernel_failed", 500


class PortClosedError(CorralError):
    code, status = "port_closed", 502


class BuildFailedError(CorralError):
    code, status = "build_failed", 422


class RegistryError(CorralError):
    code, status = "registry_error", 502


class UnavailableError(CorralError):
    code, status = "unavailable", 503


class TimeoutError_(CorralError):
    code, status = "timeout", 504


class CommandExitError(CorralError):
    """A command exited with a non-zero code (raised by the SDK, never sent by the server)."""

    code, status = "command_exit", 200

    def __init__(self, stdout: str, stderr: str, exit_code: int, error: str | None = None) -> None:
        super().__init__(f"command exited with code {exit_code}" + (f": {error}" if error else ""))
        self.stdout, self.stderr, self.exit_code, self.error = stdout, stderr, exit_code, error


def _all_subclasses(cls: type[CorralError]) -> list[type[CorralError]]:
    out: list[type[CorralError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_CLASSES: list[type[CorralError]] = [CorralError, *_all_subclasses(CorralError)]
ERRORS_BY_CODE: dict[str, type[CorralError]] = {cls.code: cls for cls in _CLASSES}


def error_from_body(status: int, body: Any) -> CorralError:
    """Rebuild the error the server raised from its ``{code, message}`` body."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        cls = ERRORS_BY_CODE.get(body["code"])
        message = str(body.get("message", ""))
        if cls is not None and cls is not CommandExitError:
            err = cls(message, **(body.get("details") or {}))
            return err
    for cls in (NotFoundError, AuthenticationError, ConflictError, InvalidRequestError, UnavailableError):
        if cls.status == status:
            return cls(str(body)[:500])
    return CorralError(f"HTTP {status}: {str(body)[:500]}")
