"""Task families: how a run's data becomes meta-training episodes, validation and a meta-test (`TaskFamily`);
each module holds one family and its settings' schema, and `conf/task/<name>.yaml` picks it."""

from metarun.tasks.family import TaskFamily, TestSet
from metarun.tasks.fixed import FixedTasks
from metarun.tasks.sampled import SampledEpisodes
from metarun.tasks.users import UserTasks

__all__ = ["FixedTasks", "SampledEpisodes", "TaskFamily", "TestSet", "UserTasks"]
