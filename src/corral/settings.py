"""One typed settings object for the server process.

Precedence: explicit overrides (command-line flags) > ``CORRAL_*`` environment variables >
defaults. Every field is documented here, and only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    host: str = Field("127.0.0.1", description="Address the HTTP API listens on (CORRAL_HOST).")
    port: int = Field(49982, description="Port of the HTTP API; 0 picks a free one (CORRAL_PORT).")
    data_dir: Path = Field(
        Path("/var/lib/corral"), description="Templates, SQLite store, API key (CORRAL_DATA_DIR)."
    )
    templates_dir_override: Path | None = Field(
        None,
        alias="templates_dir",
        description="Template cache; defaults to data_dir/templates (CORRAL_TEMPLATES_DIR).",
    )
    run_dir: Path = Field(Path("/run/corral"), description="Per-sandbox mounts and sockets (CORRAL_RUN_DIR).")
    api_key: str | None = Field(
        None, description="API key; generated and stored in data_dir when unset (CORRAL_API_KEY)."
    )
    isolation: str = Field(
        "auto",
        description="Default isolation backend: namespace, gvisor, microvm, or auto (CORRAL_ISOLATION).",
    )
    default_timeout: int = Field(300, description="Sandbox lifetime in seconds when create gives none.")
    max_timeout: int = Field(24 * 3600, description="Longest lifetime a sandbox may ask for, in seconds.")
    max_sandboxes: int = Field(
        500, description="Most sandboxes running at once; create beyond it answers 429."
    )
    default_memory_mb: int = Field(512, description="Memory limit of a sandbox when create gives none.")
    max_memory_mb: int = Field(8192, description="Largest memory limit a sandbox may ask for.")
    default_disk_mb: int = Field(
        1024, description="Size of a sandbox's writable layer when create gives none."
    )
    max_disk_mb: int = Field(16384, description="Largest writable layer a sandbox may ask for.")
    default_cpu_count: float = Field(1.0, description="CPU quota (in cores) when create gives none.")
    max_cpu_count: float = Field(8.0, description="Largest CPU quota a sandbox may ask for.")
    pool_size: int = Field(
        2, description="Started sandboxes kept warm per template, so create is a claim (0 disables)."
    )
    ready_timeout: float = Field(
        120.0,
        description="How long create waits for a template's ready check to pass (CORRAL_READY_TIMEOUT).",
    )
    subnet: str = Field("10.213.0.0/16", description="Addresses for sandbox veth pairs (/30 each).")
    domain: str = Field(
        "localhost",
        description="Port URLs are <port>-<sandbox id>.<domain> on the API's port; a wildcard DNS name the operator "
        "points at corral, or localhost (browsers resolve *.localhost to loopback) (CORRAL_DOMAIN).",
    )
    dns_upstream: str | None = Field(
        None,
        description="host[:port] of the resolver that corral's DNS filter (sandboxes with rules by domain name) "
        "asks; the host's first nameserver by default (CORRAL_DNS_UPSTREAM).",
    )
    ca_bundle: str = Field(
        "/etc/ssl/certs/ca-certificates.crt",
        description="The host's CA certificates, bound read-only over each sandbox's system bundle so code inside "
        "trusts what the host trusts (a TLS-inspecting proxy's CA, say); empty keeps the template's own (CORRAL_CA_BUNDLE).",
    )
    microvm_dir: Path | None = Field(
        None,
        description="Where the microvm backend keeps guest kernels, initramfs, template images and snapshots (keyed by "
        "what they are made of, so servers may share it); <data dir>/microvm by default (CORRAL_MICROVM_DIR).",
    )
    e2b_domain: str | None = Field(
        None,
        description="Domain of E2B host-name routing, <port>-<sandboxID>.<domain>; told to the e2b SDKs "
        "as the sandboxes' domain (CORRAL_E2B_DOMAIN). Unset: any host name of that shape is routed.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain): serve HTTPS (CORRAL_TLS_CERT_FILE)."
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file (CORRAL_TLS_KEY_FILE)."
    )
    log_level: str = Field("info", description="uvicorn and corral log level (CORRAL_LOG_LEVEL).")

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, field in cls.model_fields.items():
            name = field.alias or field_name
            raw = env.get(f"CORRAL_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "corral.db"

    @property
    def templates_dir(self) -> Path:
        return self.templates_dir_override or self.data_dir / "templates"
