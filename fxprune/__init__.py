"""fxprune: compress pretrained CNNs by rewriting their torch.fx graph, and recover accuracy
from a tiny image set (PRACTISE, Wang & Wu)."""

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import Block, Stage, Structure, find_structure
from fxprune.errors import FxpruneError, PreconditionError, TraceError
from fxprune.models import LoadedModel, load_model
from fxprune.pass_manager import PassBase, PassManager, PassResult
from fxprune.execute import CompressResult, execute
from fxprune.job import Evaluation, RunSettings, compress, run
from fxprune.options import (Decouple, Drop, FilterPruning, Init, Options, Placement, Recovery,
                             Schedule, Sparsity, StreamPruning)
from fxprune.plan import CompressionPlan, plan
from fxprune.report import Report
from fxprune.resolve import paper_rule
from fxprune.quantize import quantize_onnx
from fxprune.saving import load, save
from fxprune.summary import summarize
from fxprune.tracing import trace

__version__ = "0.1.0"

__all__ = ["Adapter", "AdapterSite", "Block", "CompressResult", "CompressionPlan", "Decouple",
           "Drop", "Evaluation", "FilterPruning", "FxpruneError", "Init", "LoadedModel",
           "Options", "PassBase", "PassManager", "PassResult", "Placement", "PreconditionError",
           "Recovery", "Report", "RunSettings", "Schedule", "Sparsity", "Stage",
           "StreamPruning", "Structure", "TraceError", "compress", "drop_sites", "execute",
           "find_structure", "load", "load_model", "paper_rule", "plan", "quantize_onnx", "run",
           "save", "summarize", "trace"]
