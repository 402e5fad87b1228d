"""Server-side model persistor whose model holds exactly the shared keys, with a resume point.

The global model is a dict of float32 numpy arrays keyed by the learner's shared keys (never the private part), so a
site's WEIGHT_DIFF adds key for key. It comes from, in this order:

1. the saved global model in ``state_dir`` when ``resume`` is on and one exists (a restarted run continues at the
   round after the saved one; :class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather` reads
   :meth:`SharedStatePersistor.get_resume_round`);
2. ``initial_state_file`` (a safetensors file of the shared state);
3. ``learner_path(**learner_args).initial_shared_state()`` (the learner is constructed, never set up). A learner
   with a method ``apply_site_config(config)`` first gets the server's own ``local/fedmrg_site.json``
   (:func:`~fedmrg.fl.site_config.load_site_config`), e.g. its ``model_paths``: the server's model directories.

Files (safetensors, metadata ``round`` = the round that produced the model), in ``state_dir``:
``FL_global_model.safetensors`` after every persisted round and ``best_FL_global_model.safetensors`` when
:class:`~nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector` announces a new best model.
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.model_desc import ModelDescriptor
from nvflare.security.logging import secure_format_exception

from fedmrg.errors import ConfigError
from fedmrg.fl.checks import check_bool, check_dict, check_dotted_path, check_str
from fedmrg.fl.learner import SharedStateLearner, State, build_learner, check_state, state_nbytes
from fedmrg.fl.site_config import SiteConfig, load_site_config
from fedmrg.fl.state_files import load_state, save_state


class SharedStatePersistor(ModelPersistor):
    def __init__(
        self,
        learner_path: str = "",
        learner_args: dict | None = None,
        initial_state_file: str = "",
        state_dir: str = "",
        resume: bool = True,
        global_model_file_name: str = "FL_global_model.safetensors",
        best_global_model_file_name: str = "best_FL_global_model.safetensors",
        filter_id: str | None = None,
    ):
        """Persists the global shared state.

        Args:
            learner_path: dotted class path of the learner whose ``initial_shared_state()`` is the initial model
                (constructed with ``learner_args``; ``setup`` is not called). Needed unless ``initial_state_file``
                is given.
            learner_args: constructor arguments of the learner, the same as the executors'. Defaults to ``{}``.
            initial_state_file: a safetensors file holding the initial shared state (float32); relative paths are
                relative to the server's app folder. Takes precedence over ``learner_path``. Defaults to ``""``.
            state_dir: folder for the global/best model files; relative paths are relative to the server workspace
                root. ``""`` (default): the server's app folder of this run. To resume a run after a restart, point it
                at a folder that outlives the run (the simulator wipes its workspace on every start).
            resume: when ``state_dir`` already holds a global model, continue from it (round after the saved one)
                instead of the initial model. Defaults to True.
            global_model_file_name: file name of the latest global model.
            best_global_model_file_name: file name of the best global model.
            filter_id: optional PersistorFilter component id (see ``ModelPersistor``).

        Raises:
            TypeError, ValueError: when an argument has a wrong type or value (the message names it).
        """
        super().__init__(filter_id=filter_id)
        if learner_path:
            check_dotted_path("learner_path", learner_path)
        if learner_args is not None:
            check_dict("learner_args", learner_args)
        check_str("initial_state_file", initial_state_file)
        check_str("state_dir", state_dir)
        check_bool("resume", resume)
        for name, value in (
            ("global_model_file_name", global_model_file_name),
            ("best_global_model_file_name", best_global_model_file_name),
        ):
            check_str(name, value, allow_empty=False)
            if Path(value).name != value:
                raise ValueError(f"`{name}` must be a plain file name, got {value!r}")
        if Path(global_model_file_name).stem == Path(best_global_model_file_name).stem:
            raise ValueError(
                "`global_model_file_name` and `best_global_model_file_name` must differ (without extension), got "
                f"{global_model_file_name!r} and {best_global_model_file_name!r}"
            )
        if not learner_path and not initial_state_file:
            raise ValueError("give `learner_path` or `initial_state_file`: the initial model comes from one of them")

        self.learner_path = learner_path
        self.learner_args = learner_args
        self.initial_state_file = initial_state_file
        self.state_dir = state_dir
        self.resume = resume
        self.global_model_file_name = global_model_file_name
        self.best_global_model_file_name = best_global_model_file_name

        self._dir: Path | None = None
        self._app_root: Path | None = None
        self._resume_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._initialize(fl_ctx)
        elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            ml = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
            if isinstance(ml, ModelLearnable):
                r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
                # the model that was validated is the one sent out in round r, i.e. produced by round r - 1
                self._write(self.best_global_model_file_name, ml, produced_by=(r - 1) if isinstance(r, int) else -1)
                self.log_info(fl_ctx, f"saved best global model (validated in round {r}) to {self._dir}")

    def _initialize(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_engine().get_workspace()
        self._app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT) or workspace.get_app_dir(fl_ctx.get_job_id()))
        if self.state_dir:
            d = Path(os.path.expanduser(self.state_dir))
            self._dir = d if d.is_absolute() else Path(workspace.get_root_dir()) / d
        else:
            self._dir = self._app_root
        self._dir.mkdir(parents=True, exist_ok=True)

    # -- ModelPersistor ----------------------------------------------------------------------------------------
    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        if self._dir is None:
            self._initialize(fl_ctx)
        try:
            state, source = self._initial_state(fl_ctx)
        except Exception as e:
            self.system_panic(f"cannot build the initial global model: {secure_format_exception(e)}", fl_ctx)
            return make_model_learnable({}, {})
        self.log_info(
            fl_ctx,
            f"global model from {source}: {len(state)} shared keys, {state_nbytes(state)} bytes (fp32); "
            f"saving to {self._dir}",
        )
        return make_model_learnable(state, {})

    def _initial_state(self, fl_ctx: FLContext) -> tuple[State, str]:
        saved = self._dir / self.global_model_file_name
        if self.resume and saved.is_file():
            state, meta = load_state(saved)
            state = check_state(state, None, what=f"saved global model {saved}")
            if "round" not in meta or not meta["round"].lstrip("-").isdigit():
                raise ValueError(f"{saved}: metadata has no integer `round` ({meta})")
            self._resume_round = int(meta["round"]) + 1
            return state, f"{saved} (resuming at round {self._resume_round})"
        if self.initial_state_file:
            path = Path(os.path.expanduser(self.initial_state_file))
            path = path if path.is_absolute() else self._app_root / path
            state, _ = load_state(path)
            return check_state(state, None, what=f"initial state file {path}"), str(path)
        learner, site_config = self._build_server_learner(fl_ctx)
        keys = sorted(learner.shared_keys())
        state = check_state(learner.initial_shared_state(), keys, what=f"{self.learner_path}.initial_shared_state()")
        source = f"{self.learner_path}.initial_shared_state()"
        if site_config.model_paths:
            source += f" with the model_paths of fedmrg_site.json {site_config.model_paths}"
        return state, source

    def server_learner(self, fl_ctx: FLContext) -> SharedStateLearner:
        """A new server-side learner (no ``setup``; the server's own ``fedmrg_site.json`` section applied): it gives
        the initial model and, after training, the statistics round's final model."""
        return self._build_server_learner(fl_ctx)[0]

    def _build_server_learner(self, fl_ctx: FLContext) -> tuple[SharedStateLearner, SiteConfig]:
        learner = build_learner(self.learner_path, self.learner_args)
        workspace = fl_ctx.get_engine().get_workspace()
        # the server reads its own section only; every site checks the section names against the job's clients
        site_config = load_site_config(workspace.get_site_config_dir(), fl_ctx.get_identity_name() or "server")
        if callable(getattr(learner, "apply_site_config", None)):  # optional hook, see fedmrg.fl.learner
            learner.apply_site_config(site_config)
        elif site_config.model_paths:
            raise ConfigError(
                f"{site_config.where('model_paths')}: {self.learner_path} takes no site settings (no "
                f"`apply_site_config`); remove `model_paths` from the server's file"
            )
        return learner, site_config

    def get_resume_round(self, fl_ctx: FLContext) -> int | None:
        """The round to continue at when the model was resumed from ``state_dir``; None for a fresh start."""
        return self._resume_round

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext):
        r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        self._write(self.global_model_file_name, model, produced_by=r if isinstance(r, int) else -1)

    def _write(self, name: str, model: ModelLearnable, *, produced_by: int) -> None:
        weights = model[ModelLearnableKey.WEIGHTS]
        save_state(self._dir / name, weights, metadata={"round": str(produced_by)})

    def get_model_inventory(self, fl_ctx: FLContext) -> dict[str, ModelDescriptor]:
        """Saved models by name (the file name without extension, e.g. ``FL_global_model``)."""
        out = {}
        for file_name in (self.global_model_file_name, self.best_global_model_file_name):
            path = self._dir / file_name
            if path.is_file():
                name = Path(file_name).stem
                out[name] = ModelDescriptor(name=name, location=str(path), model_format="safetensors", props={})
        return out

    def get_model(self, model_file: str, fl_ctx: FLContext) -> ModelLearnable:
        """The saved model named ``model_file`` (a name of :meth:`get_model_inventory`)."""
        inventory = self.get_model_inventory(fl_ctx)
        if model_file not in inventory:
            raise ValueError(f"no model {model_file!r} in {self._dir}; have {sorted(inventory)}")
        state, meta = load_state(inventory[model_file].location)
        return make_model_learnable(state, {"round": meta.get("round", "")})
