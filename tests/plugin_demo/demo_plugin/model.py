"""MDLM under another name and look: what a third-party family needs, a LanguageModel subclass
with its own Display (its method, colour and marker)."""
from baselines.mdlm import MDLM
from esolm.interface import Display


class DemoMDLM(MDLM):
    @classmethod
    def display(cls, config) -> Display:
        return Display("Demo", "Demo MDLM", "#17becf", marker="D", order=2000)
