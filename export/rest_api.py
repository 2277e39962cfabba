"""TF Serving's REST predict API, in one process that imports only TensorFlow.

No TF Serving binary installs here, so this is how an exported SavedModel is served and
tested the way TF Serving calls it: a request body as TF Serving's
`POST /v1/models/NAME:predict` takes it, decoded into the signature's inputs, and the
response body it would send back.

Requests (JSON):
- row format: `{"signature_name": "serving_default", "instances": [{"b64": "..."}, ...]}`
  (one value per image; `{"images": {"b64": ...}}` names the input);
- columnar format: `{"inputs": [{"b64": "..."}, ...]}` or `{"inputs": {"images": [...]}}`.
`{"b64": ...}` is a binary value (an encoded image); `serving_uint8` takes nested lists
of ints. `signature_name` defaults to `serving_default`.

Responses: `{"predictions": [{output: value, ...} per image]}` for the row format,
`{"outputs": {output: value}}` for the columnar one, and on failure
`{"error": message, "type": "InvalidArgumentError"}` (TF Serving answers HTTP 400) with
the cause, e.g. `images[1] is an empty string, not an encoded image.`; the next request
is served as usual.

    python export/rest_api.py --saved_model_dir=models/digits/1 < requests.jsonl

reads one request body per line of standard input and writes one response body per line.
"""

import argparse
import base64
import binascii
import json
import re
import sys
from typing import Any, Dict

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


class BadRequest(ValueError):
    """A request that does not fit the REST API or the signature."""


def error_message(error: Exception) -> str:
    """The cause in a TensorFlow error, without graph node names.

    `tf.debugging.Assert` failures read `assertion failed: [images[1] is ...]`; this
    returns `images[1] is ...`. Other errors give their first meaningful line.
    """
    message = getattr(error, "message", None) or str(error)
    found = re.search(r"assertion failed: \[(.*)\]", message)
    if found:
        return found.group(1)
    lines = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith("[[")
             and line != "Graph execution error:"]
    return re.sub(r"\s*\[Op:\w+\]$", "", lines[0]) if lines else type(error).__name__


def _decode_binary(value: Any) -> Any:
    """Replaces every `{"b64": text}` in a JSON value by its bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError) as error:
                raise BadRequest(f"Invalid base64 in a b64 value: {error}.")
        raise BadRequest(f"An object in a tensor value must be {{\"b64\": ...}}, got keys "
                         f"{sorted(value)}.")
    if isinstance(value, list):
        return [_decode_binary(item) for item in value]
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return value


class PredictHandler:
    """Answers REST predict request bodies with a loaded SavedModel.

    Args:
        saved_model_dir: a SavedModel directory.
    """

    def __init__(self, saved_model_dir: str):
        self.model = tf.saved_model.load(saved_model_dir)

    def _signature(self, name: str):
        if name not in self.model.signatures:
            raise BadRequest(f"Serving signature name: {name!r} not found in signature def; "
                             f"available: {sorted(self.model.signatures)}.")
        return self.model.signatures[name]

    def _inputs(self, request: Dict, specs: Dict[str, tf.TensorSpec]) -> Dict[str, Any]:
        """The signature's input values (JSON-decoded) from a row or columnar request."""
        if ("instances" in request) == ("inputs" in request):
            raise BadRequest('A request needs exactly one of "instances" (row format) and '
                             '"inputs" (columnar format).')
        names = sorted(specs)

        def named(value: Any, where: str) -> Dict[str, Any]:
            """`{input: value}`: an object naming every input, or the single input's value."""
            if isinstance(value, dict) and set(value) != {"b64"}:
                if set(value) != set(names):
                    raise BadRequest(f"{where} names {sorted(value)}; the inputs are {names}.")
                return {name: _decode_binary(value[name]) for name in names}
            if len(names) != 1:
                raise BadRequest(f"{where} must be an object naming the inputs {names}.")
            return {names[0]: _decode_binary(value)}

        if "inputs" in request:
            return named(request["inputs"], '"inputs"')
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest('"instances" must be a non-empty list.')
        rows = [named(instance, "An instance") for instance in instances]
        return {name: [row[name] for row in rows] for name in names}

    def handle(self, body: str) -> Dict:
        """The response body (a dict) for a request body (JSON text)."""
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise BadRequest("The request body must be a JSON object.")
            signature = self._signature(request.get("signature_name", DEFAULT_SIGNATURE))
            specs = signature.structured_input_signature[1]
            tensors = {}
            for name, value in self._inputs(request, specs).items():
                spec = specs[name]
                try:
                    tensors[name] = tf.constant(value, dtype=spec.dtype)
                except (TypeError, ValueError) as error:
                    raise BadRequest(f"Input {name!r} is not a {spec.dtype.name} tensor: {error}.")
                if not spec.shape.is_compatible_with(tensors[name].shape):
                    raise BadRequest(f"Input {name!r} has shape {tensors[name].shape.as_list()}; "
                                     f"the signature takes {spec.shape.as_list()}.")
            outputs = signature(**tensors)
        except json.JSONDecodeError as error:
            return {"error": f"JSON parse error: {error}.", "type": "InvalidArgumentError"}
        except BadRequest as error:
            return {"error": str(error), "type": "InvalidArgumentError"}
        except tf.errors.OpError as error:
            return {"error": error_message(error), "type": type(error).__name__}
        values = {name: _to_json(tensor.numpy().tolist()) for name, tensor in outputs.items()}
        if "inputs" in request:
            return {"outputs": values}
        count = len(next(iter(values.values())))
        return {"predictions": [{name: value[i] for name, value in values.items()}
                                for i in range(count)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved_model_dir", required=True)
    args = parser.parse_args()
    handler = PredictHandler(args.saved_model_dir)
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(handler.handle(line)) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
