"""Configuration: one :class:`Settings`, read from ``STEWARD_*`` variables and ``.env``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Nothing here is read at import time: build one per app."""

    model_config = SettingsConfigDict(env_prefix="STEWARD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Blobs and the default SQLite file live here.")
    database_url: str | None = Field(
        None, description="sqlite:///path or postgresql+psycopg://…; default: SQLite in data_dir."
    )
    admin_key: str | None = Field(None, description="An admin API key accepted from start-up.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Request body limit (413 past it).")
    max_header_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest safetensors / ONNX header accepted on import."
    )
    metrics_enabled: bool = Field(True, description="Serve /metrics (open).")
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1, description="How long Idempotency-Keys are kept.")
    prediction_ttl_seconds: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="How long recorded predictions (predict with record) wait for their labels; "
        "labelled ones live on as samples in the log.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes of `steward serve` sharing the port (uvicorn's supervisor); each runs its own "
        "job worker and learner runtime unless turned off.",
    )
    run_worker: bool = Field(True, description="Run a job worker thread inside the API process.")
    run_learner: bool = Field(True, description="Run the online learner inside the API process.")
    learner_process: bool = Field(
        True,
        description="Run the learner runtime in a child process of the API process (its own "
        "interpreter lock, so parsing requests and learning use two cores) instead of a thread.",
    )
    job_lease_seconds: float = Field(30.0, gt=0)
    job_max_attempts: int = Field(3, ge=1)
    worker_poll_seconds: float = Field(0.2, gt=0)
    learner_poll_seconds: float = Field(0.05, gt=0)
    cache_refresh_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="How often each process polls for changes other processes made to API keys, aliases, "
        "versions and models: the bound on how long another process may serve what it cached of them.",
    )
    learner_lease_seconds: float = Field(15.0, gt=0)
    learner_window: int = Field(1000, ge=10, description="Size of the recent prequential window.")
    learner_idle_seconds: float = Field(
        300.0,
        gt=0,
        allow_inf_nan=False,
        description="A held model's learner with nothing to do (no samples to apply, no checkpoint or resume "
        "request) for this long drops its in-memory network, keeping the lease; it reloads on the next sample.",
    )
    learner_memory_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Bound on the memory of the learners a process holds in memory (parameters, gradient, "
        "optimizer state); past it the least recently active are dropped first. A larger model is learned alone.",
    )
    metrics_point_samples: int = Field(
        100,
        ge=1,
        le=2**40,
        description="The learner records a point of a model's metrics history (GET /models/{name}/metrics/history) "
        "when it publishes progress at least this many samples past the last point.",
    )
    ingest_group_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="How long a sample append may wait for company, to commit (fsync) together: "
        "concurrent /update requests still reading their bodies, and as many appends as the last "
        "commit carried; 0 commits at once.",
    )
    blob_tmp_grace_seconds: float = Field(
        600.0,
        ge=0,
        allow_inf_nan=False,
        description="At start-up (serve and worker), temporary files of the blob store older than this are "
        "removed: leftovers of writes killed mid-way. Younger ones may be a write in flight in another process.",
    )
    max_params: int = Field(100_000_000, ge=1, description="Largest network (parameters) a client may create")
    page_limit_max: int = Field(500, ge=1)
    access_log: bool = Field(False)
    blas_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="BLAS threads of `steward serve` / `steward worker` processes (sets OPENBLAS_NUM_THREADS, "
        "OMP_NUM_THREADS and MKL_NUM_THREADS unless already set).",
    )
    gc_tuning: bool = Field(
        True,
        description="At start-up, freeze the objects that exist (gc.freeze) and raise the youngest "
        "generation's threshold to 50,000, so parsing a large request body does not trigger full collections.",
    )
    events_poll_seconds: float = Field(
        0.25,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="While clients wait on the event feed (long poll, SSE), how often each process reads the "
        "events other processes committed (its own commits wake the waiters at once).",
    )
    events_keep: int = Field(
        10_000, ge=1, description="Newest events each process keeps in memory for feed readers that keep up."
    )
    events_heartbeat_seconds: float = Field(
        15.0, gt=0, le=3600, allow_inf_nan=False, description="An SSE stream sends a comment this often when idle."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks send to loopback, private and link-local addresses (refused by default: "
        "a webhook URL must not reach the service's own network).",
    )
    webhook_max_attempts: int = Field(
        10, ge=1, le=100, description="Attempts of a webhook delivery before it is marked failed."
    )
    webhook_backoff_seconds: float = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description="Wait after a delivery's first failed attempt; it doubles at each further failure (up to "
        "STEWARD_WEBHOOK_BACKOFF_MAX_SECONDS), times a random factor in [0.5, 1].",
    )
    webhook_backoff_max_seconds: float = Field(
        900.0, gt=0, allow_inf_nan=False, description="The longest wait between two attempts of a delivery."
    )
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=120, allow_inf_nan=False, description="An attempt's time limit (connect: 3 s at most)."
    )
    webhook_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="How often the delivery loop looks for new events and due retries (this process's own "
        "commits wake it at once).",
    )
    webhook_concurrency: int = Field(4, ge=1, le=64, description="Attempts a delivery loop makes at once.")
    secrets_key: str | None = Field(
        None,
        description="Base64 of 32 bytes: seals webhook secrets in the database and the dashboard's session "
        "cookies (AES-256-GCM). Unset: a key file `secrets.key` in the data directory, made on first use. Give "
        "every process the same one.",
    )
    ui_session_seconds: float = Field(
        8 * 3600.0,
        gt=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="How long a dashboard sign-in lasts (the session cookie's lifetime).",
    )
    events_wait_max_seconds: float = Field(
        60.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="The longest a `GET /events?wait=` request is held (a longer wait is shortened to it): "
        "keep it under the idle timeout of the proxies in front.",
    )
    events_stream_max_seconds: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Close an SSE stream after this long (clients reconnect with Last-Event-ID and resume "
        "where they were): for proxies that cut long connections. Unset: streams stay open.",
    )
    policy_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="How often each worker's policy scheduler looks for triggers that fired.",
    )
    policy_max_failures: int = Field(
        3, ge=1, le=100, description="Pipelines of a policy that may fail in a row before the policy is disabled."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="On SIGTERM / SIGINT, `steward serve` finishes the requests in flight for at most this long, "
        "then closes what is still open (event streams never end by themselves).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("STEWARD_DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL")
        if v.startswith("postgresql://") or v.startswith("postgres://"):
            v = "postgresql+psycopg://" + v.split("://", 1)[1]
        return v

    @model_validator(mode="after")
    def _fill(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def url(self) -> str:
        """The effective database URL."""
        return self.database_url or f"sqlite:///{self.data_dir / 'steward.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
