"""Hands the server's saved global models (latest and best) to cross-site evaluation.

``CrossSiteModelEval(model_locator_id=...)`` sends each model named here to every site as a WEIGHTS DXO holding the
shared keys; sites evaluate it with their own private part when the executor is ``personalized``. Results appear as
``SRV_FL_global_model`` and ``SRV_best_FL_global_model`` columns; ``models`` restricts them (each costs one evaluation
at every site).
"""

from __future__ import annotations

from nvflare.apis.dxo import DXO
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import model_learnable_to_dxo
from nvflare.app_common.abstract.model_locator import ModelLocator

from fedmrg.fl.checks import check_str
from fedmrg.fl.shared_state_persistor import SharedStatePersistor


class SharedStateModelLocator(ModelLocator):
    def __init__(self, persistor_id: str = "persistor", models: list[str] | None = None):
        """Locates models through a SharedStatePersistor.

        Args:
            persistor_id: component id of the :class:`SharedStatePersistor`. Defaults to ``"persistor"``.
            models: the saved models to evaluate, e.g. ``["FL_global_model"]``; None (default): every saved model
                (the latest and the best global model).
        """
        super().__init__()
        check_str("persistor_id", persistor_id, allow_empty=False)
        if models is not None and (isinstance(models, str) or not all(isinstance(m, str) and m for m in models)):
            raise TypeError(f"`models` must be a list of model names, got {models!r}")
        self.persistor_id = persistor_id
        self.models = None if models is None else list(models)
        self._persistor: SharedStatePersistor | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            persistor = fl_ctx.get_engine().get_component(self.persistor_id)
            if not isinstance(persistor, SharedStatePersistor):
                self.system_panic(
                    f"`persistor_id` {self.persistor_id!r} must name a SharedStatePersistor, got {type(persistor)}",
                    fl_ctx,
                )
                return
            self._persistor = persistor

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        names = sorted(self._persistor.get_model_inventory(fl_ctx)) if self._persistor else []
        if self.models is None:
            return names
        missing = sorted(set(self.models) - set(names))
        if missing:
            self.log_warning(fl_ctx, f"cross-site evaluation: no saved model {missing}; the server saved {names}")
        return [n for n in names if n in self.models]

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO:
        return model_learnable_to_dxo(self._persistor.get(model_name, fl_ctx))
