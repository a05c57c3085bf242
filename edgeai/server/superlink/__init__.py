"""The SuperLink: its process, its Control API, node enrollment and training runs.

``flower-superlink`` runs as a supervised child (:class:`SuperLinkProcess`); the server
talks to it through Flower's Control API (:class:`ControlConnection`) to approve node keys
(:func:`enroll`) and to submit, follow and resubmit the training run (:func:`submit`;
the server does it through a :class:`RunControl`, with :class:`MemoryRuns` as its twin).
"""

from edgeai.server.superlink.control import ControlAPIError, ControlConnection, control_client
from edgeai.server.superlink.enroll import (
    EnrolledNode,
    enroll,
    enrolled_nodes,
    read_public_key,
    unenroll,
)
from edgeai.server.superlink.flwr_cli import write_flwr_config
from edgeai.server.superlink.process import (
    SuperLinkConfig,
    SuperLinkError,
    SuperLinkProcess,
    flower_env,
    superlink_argv,
)
from edgeai.server.superlink.runner import ControlRuns, MemoryRuns, RunControl
from edgeai.server.superlink.runs import (
    RunFailedError,
    RunStatus,
    follow,
    run_to_end,
    status,
    stop,
    submit,
    write_app_dir,
)
from edgeai.server.superlink.tls import TlsFiles, generate_tls

__all__ = [
    "ControlAPIError",
    "ControlConnection",
    "ControlRuns",
    "EnrolledNode",
    "MemoryRuns",
    "RunControl",
    "RunFailedError",
    "RunStatus",
    "SuperLinkConfig",
    "SuperLinkError",
    "SuperLinkProcess",
    "TlsFiles",
    "control_client",
    "enroll",
    "enrolled_nodes",
    "flower_env",
    "follow",
    "generate_tls",
    "read_public_key",
    "run_to_end",
    "status",
    "stop",
    "submit",
    "superlink_argv",
    "unenroll",
    "write_app_dir",
    "write_flwr_config",
]
