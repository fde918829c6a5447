"""fxprune: compress pretrained CNNs by rewriting their torch.fx graph, and recover accuracy
from a tiny image set (PRACTISE, Wang & Wu)."""

from fxprune.adapters import Adapter, AdapterSite
from fxprune.analysis.sites import drop_sites
from fxprune.analysis.structure import Block, Stage, Structure, find_structure
from fxprune.errors import FxpruneError, PreconditionError, TraceError
from fxprune.models import LoadedModel, load_model
from fxprune.pass_manager import PassBase, PassManager, PassResult
from fxprune.pipeline import CompressResult, compress, paper_rule
from fxprune.quantize import quantize_onnx
from fxprune.saving import load, save
from fxprune.summary import summarize
from fxprune.tracing import trace

__version__ = "0.1.0"

__all__ = ["Adapter", "AdapterSite", "Block", "CompressResult", "FxpruneError", "LoadedModel",
           "PassBase", "PassManager", "PassResult", "PreconditionError", "Stage", "Structure",
           "TraceError", "compress", "drop_sites", "find_structure", "load", "load_model",
           "paper_rule", "quantize_onnx", "save", "summarize", "trace"]
