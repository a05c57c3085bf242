"""Device profiles: what each class of edge device can run, and the budgets it must meet.

>>> from edgeai.profiles import load_profile
>>> load_profile("rpi5").precisions
('int8-static', 'int8-dynamic', 'fp32')
"""

# ``commands`` is imported so that ``profiles.commands.app`` works for the CLI.
from edgeai.profiles import commands
from edgeai.profiles.loader import list_profiles, load_profile, profile_names, profiles_dir
from edgeai.profiles.schema import (
    Accelerator,
    Budgets,
    Cpu,
    DeviceProfile,
    ExecutionProvider,
    Simulation,
)

__all__ = [
    "Accelerator",
    "Budgets",
    "Cpu",
    "DeviceProfile",
    "ExecutionProvider",
    "Simulation",
    "commands",
    "list_profiles",
    "load_profile",
    "profile_names",
    "profiles_dir",
]
