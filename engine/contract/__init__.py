"""The event contract: what an input record may hold, how it is decoded, and what is written back.

Following one record from ``Pipeline.submit``:

* :mod:`engine.contract.decode` picks the format by the record's ``content-type`` header
  (JSON, the default, or binary tensors) and decodes one record or a chunk;
* :mod:`engine.contract.context` holds :class:`~engine.contract.context.DecodeContext`
  (the served models, the default model, the limits, the A/B router);
* :mod:`engine.contract.json_input` decodes JSON events, :mod:`engine.contract.binary_input`
  binary tensor events; both run the checks of :mod:`engine.contract.input_checks` (envelope,
  id, model, input names, dead letters), and JSON tensors are converted by
  :mod:`engine.contract.dtypes`;
* :mod:`engine.contract.outputs` encodes predictions (JSON or binary) and shadow predictions;
* :mod:`engine.contract.wire` is the binary layout itself (header names, writing events for
  producers, reading binary values back).

Nothing is re-exported here: import each name from the module that defines it.
"""
