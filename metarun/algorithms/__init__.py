"""Meta-learning algorithms behind one interface (`Algorithm.meta_gradient`, `Algorithm.adapt`); each module
holds one algorithm and its settings' schema."""

from metarun.algorithms.base import Algorithm, Params, TaskStats
from metarun.algorithms.maml import MAML
from metarun.algorithms.mamlpp import MAMLpp
from metarun.algorithms.metasgd import MetaSGD
from metarun.algorithms.protonet import ProtoNet
from metarun.algorithms.reptile import Reptile
from metarun.algorithms.supervised import SupervisedBaseline

__all__ = ["MAML", "Algorithm", "MAMLpp", "MetaSGD", "Params", "ProtoNet", "Reptile", "SupervisedBaseline", "TaskStats"]
