"""Using a trained FedMRG model: find its states in any run output, build it, write reports for images.

- :mod:`fedmrg.inference.sources`: a run's configuration, global (shared) state and each site's private state, read
  from an exported model folder, a ``fedmrg train`` run folder, a FLARE simulator workspace (or its ``app_server``
  folder or ``FL_global_model.safetensors``) or a ``fedmrg demo --out`` folder.
- :mod:`fedmrg.inference.predict`: one loaded model that writes the report and the 14 observation states for an
  image file (PNG / JPEG / DICOM), with the generic adapter alone and personalized with a site's specialized adapter.
- :mod:`fedmrg.inference.outputs`: text, JSON, CSV and DICOM Basic Text SR renderings of a prediction.
"""
