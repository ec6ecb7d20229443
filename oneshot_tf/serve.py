"""A small local server: TF Serving's REST API over exported SavedModels, plus the page.

  python -m oneshot_tf.serve --export_dir=pretrained [--export_dir=runs/gmn/export] \
      [--port=8501] [--host=127.0.0.1] [--data_dir=../shared/data]
  python -m oneshot_tf.serve --upstream=http://localhost:8501 --port=8080   # page for a real TF Serving

Then open http://127.0.0.1:8501/ to draw a few examples of a character and see new
ones. Endpoints (the first three as TF Serving's REST API, so the page and
tools/serving_client.py work against either):

  POST /v1/models/<model:name>[/versions/<v>]:predict   {"signature_name", "inputs"} -> {"outputs"}
  GET  /v1/models/<model:name>[/versions/<v>]           version status
  GET  /v1/models/<model:name>[/versions/<v>]/metadata  signature defs
  GET  /v1/models                                 the models this server knows (ours only)
  GET  /v1/examples?seed=N                        drawings of a random test character (ours only)
  GET  /                                          the page (oneshot_tf/web/)

With `--upstream`, the /v1/models/... requests go to that TF Serving (the page's
origin must be the API's: TF Serving sends no CORS headers), and /v1/models answers
404 as TF Serving does, so the page asks for a model name.

An `--export_dir` is a model base path in TF Serving's layout (`<dir>/<version>/
saved_model.pb`; the newest version is served, named after the folder) or a folder
of such model base paths (`pretrained/`, `runs/x/export/`). SavedModels are loaded
with `tf.saved_model.load`; no project code runs inside a request but this file.

Requests are bounded (body size, batch, shots, `num_samples`); every bad request gets
a JSON `{"error": "..."}` with a 4xx status, as TF Serving answers, and the server
keeps serving. It binds to 127.0.0.1 unless told otherwise.
"""

import dataclasses
import json
import pathlib
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tensorflow.core.framework import types_pb2
from werkzeug import exceptions, routing, serving, wrappers

from oneshot_tf import cli, errors, pretrained

_WEB = pathlib.Path(__file__).resolve().parent / "web"
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_request_bytes: int = 16 << 20
    max_batch: int = 64
    max_shots: int = 20
    max_num_samples: int = 5000


@dataclasses.dataclass
class ServedModel:
    name: str
    version: int
    path: pathlib.Path
    module: object  # What tf.saved_model.load returned.

    @property
    def signatures(self):
        return self.module.signatures


class BadRequest(Exception):
    """A request the server refuses, with its HTTP status and a message for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def discover(export_dirs) -> dict:
    """{model name: (newest version, its path)} for model base paths or folders of them.

    Raises errors.ExportNotFoundError naming a folder that holds no SavedModel in TF Serving's layout.
    """
    found = {}
    for export_dir in map(pathlib.Path, export_dirs):
        if not export_dir.is_dir():
            raise errors.ExportNotFoundError(f"--export_dir {export_dir} is not a folder")
        bases = (
            [export_dir]
            if pretrained.saved_model_versions(export_dir)
            else [p for p in sorted(export_dir.iterdir()) if p.is_dir()]
        )
        bases = [b for b in bases if pretrained.saved_model_versions(b)]
        if not bases:
            raise errors.ExportNotFoundError(
                f"--export_dir {export_dir} holds no SavedModel in TF Serving's layout "
                "(<model:name>/<version>/saved_model.pb or <version>/saved_model.pb)"
            )
        for base in bases:
            version = pretrained.saved_model_versions(base)[-1]
            found[base.name] = (version, base / str(version))
    return found


def load_models(export_dirs) -> dict:
    """{name: ServedModel} with each model's newest version loaded."""
    models = {}
    for name, (version, path) in discover(export_dirs).items():
        logging.info("Loading %s version %d from %s", name, version, path)
        models[name] = ServedModel(name, version, path, tf.saved_model.load(str(path)))
    return models


def _assertion_message(error: tf.errors.OpError) -> str:
    """The message of a failed tf.debugging.Assert in a signature, without TF's node dump."""
    match = re.search(r"^assertion failed: \[(.*)\]$", error.message, re.MULTILINE)
    if match:
        return match.group(1)
    lines = [line for line in error.message.splitlines() if line.strip() and "Graph execution error" not in line]
    return lines[0].strip() if lines else "invalid argument"


def _to_array(name: str, value, spec: tf.TensorSpec) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"input {name!r} is not a rectangular array of {spec.dtype.name}: {e}") from e
    if not spec.shape.is_compatible_with(array.shape):
        raise BadRequest(f"input {name!r} must have shape {spec.shape.as_list()}, got {list(array.shape)}")
    return array


def _check_limits(inputs: dict, limits: Limits):
    for name, array in inputs.items():
        if name in ("support", "query") and array.ndim >= 1 and array.shape[0] > limits.max_batch:
            raise BadRequest(f"batch of {array.shape[0]} in {name!r} exceeds this server's limit of {limits.max_batch}")
        if name == "support" and array.ndim >= 2 and array.shape[1] > limits.max_shots:
            raise BadRequest(f"{array.shape[1]} shots exceed this server's limit of {limits.max_shots}")
    num_samples = inputs.get("num_samples")
    if num_samples is not None and num_samples.size == 1 and int(num_samples) > limits.max_num_samples:
        raise BadRequest(f"num_samples {int(num_samples)} exceeds this server's limit of {limits.max_num_samples}")


def predict(model: ServedModel, body, limits: Limits = Limits()):
    """Runs one TF Serving-style predict request (columnar "inputs"); returns its "outputs"."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "instances" in body:
        raise BadRequest('use the columnar "inputs" format: these signatures take unbatched seed and num_samples')
    signature_name = body.get("signature_name") or "serving_default"
    if signature_name not in model.signatures:
        raise BadRequest(
            f'Serving signature name: "{signature_name}" not found in signature def; '
            f"valid: {', '.join(sorted(model.signatures))}"
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise BadRequest('"inputs" must be a JSON object of named inputs')
    function = model.signatures[signature_name]
    specs = function.structured_input_signature[1]
    missing, unknown = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
    if missing or unknown:
        raise BadRequest(
            f"signature {signature_name!r} takes inputs {', '.join(sorted(specs))}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    arrays = {name: _to_array(name, inputs[name], spec) for name, spec in specs.items()}
    _check_limits(arrays, limits)
    try:
        outputs = function(**{name: tf.constant(array) for name, array in arrays.items()})
    except tf.errors.InvalidArgumentError as e:
        raise BadRequest(_assertion_message(e)) from e
    outputs = {name: value.numpy().tolist() for name, value in outputs.items()}
    # TF Serving's columnar format: a lone output is given bare, not in a dict.
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _tensor_info(spec: tf.TensorSpec) -> dict:
    shape = (
        {
            "dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()],
            "unknown_rank": False,
        }
        if spec.shape.rank is not None
        else {"dim": [], "unknown_rank": True}
    )
    dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)  # DT_FLOAT, DT_INT32, as TF Serving says.
    return {"dtype": dtype, "tensor_shape": shape, "name": spec.name or ""}


def metadata(model: ServedModel) -> dict:
    """TF Serving's GetModelMetadata answer, in its REST JSON form."""
    signature_def = {}
    for name, function in model.signatures.items():
        outputs = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype, getattr(t, "name", None)), function.structured_outputs
        )
        signature_def[name] = {
            "inputs": {k: _tensor_info(s) for k, s in function.structured_input_signature[1].items()},
            "outputs": {k: _tensor_info(s) for k, s in outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": signature_def}},
    }


class Examples:
    """Drawings of random test characters (evaluation alphabets), loaded on first use."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self._characters = None
        self._lock = threading.Lock()

    def random(self, seed: int, count: int = 5) -> dict:
        from oneshot_tf.data import episodes, omniglot

        if self.data_dir is None:
            raise BadRequest("this server has no Omniglot data (start it with --data_dir)", 404)
        with self._lock:
            if self._characters is None:
                try:
                    self._characters = omniglot.load_splits("auto", self.data_dir)["test"]
                except omniglot.DataError as e:
                    raise BadRequest(f"no test characters: {e}", 404) from e
        rng = np.random.default_rng(seed)
        character = int(rng.integers(len(self._characters.names)))
        drawers = rng.choice(self._characters.images.shape[1], size=count, replace=False)
        images = episodes.fixed_binary(self._characters.images[character, drawers])
        return {"character": self._characters.names[character], "images": images.astype(int).tolist()}


class _ModelName(routing.BaseConverter):
    """A model name: no slash, no colon (so `<name>:predict` splits off its verb)."""

    regex = "[^/:]+"


_ROUTES = routing.Map(
    [
        routing.Rule("/", endpoint="page", methods=["GET"]),
        routing.Rule("/static/<path:filename>", endpoint="static", methods=["GET"]),
        routing.Rule("/v1/models", endpoint="list", methods=["GET"]),
        routing.Rule("/v1/examples", endpoint="examples", methods=["GET"]),
        routing.Rule("/v1/models/<model:name>:predict", endpoint="predict", methods=["POST"]),
        routing.Rule("/v1/models/<model:name>/versions/<int:version>:predict", endpoint="predict", methods=["POST"]),
        routing.Rule("/v1/models/<model:name>", endpoint="status", methods=["GET"]),
        routing.Rule("/v1/models/<model:name>/versions/<int:version>", endpoint="status", methods=["GET"]),
        routing.Rule("/v1/models/<model:name>/metadata", endpoint="metadata", methods=["GET"]),
        routing.Rule("/v1/models/<model:name>/versions/<int:version>/metadata", endpoint="metadata", methods=["GET"]),
    ],
    converters={"model": _ModelName},
)


class App:
    """The WSGI application: routes to the models, the page and the examples."""

    def __init__(self, models: dict, *, limits: Limits = Limits(), data_dir=None, upstream: str | None = None):
        self.models = models
        self.limits = limits
        self.examples = Examples(data_dir)
        self.upstream = upstream.rstrip("/") if upstream else None

    def _forward(self, request: wrappers.Request) -> wrappers.Response:
        """Passes a /v1/models request to the upstream TF Serving and its answer back."""
        url = self.upstream + request.full_path.rstrip("?")
        data = request.get_data(cache=False) if request.method == "POST" else None
        upstream_request = urllib.request.Request(
            url, data, {"Content-Type": request.content_type or "application/json"}, method=request.method
        )
        try:
            with urllib.request.urlopen(upstream_request, timeout=300) as answer:
                status, body, content_type = answer.status, answer.read(), answer.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            status, body, content_type = e.code, e.read(), e.headers.get("Content-Type")
        except OSError as e:
            raise BadRequest(f"upstream {self.upstream} unreachable: {e}", 502) from e
        return wrappers.Response(body, status=status, content_type=content_type or "application/json")

    def _model(self, name: str, version: int | None) -> ServedModel:
        model = self.models.get(name)
        if model is None or (version is not None and version != model.version):
            wanted = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise BadRequest(f"Servable not found for request: {wanted}", 404)
        return model

    def _json_body(self, request: wrappers.Request):
        data = request.get_data(cache=False)
        if not data:
            raise BadRequest("empty request body; expected JSON")
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"request body is not JSON: {e}") from e

    def _dispatch(self, request: wrappers.Request, endpoint: str, args: dict):
        if endpoint == "page":
            return self._static("index.html")
        if endpoint == "static":
            return self._static(args["filename"])
        if endpoint == "list":
            return {"models": [{"name": m.name, "version": str(m.version)} for m in self.models.values()]}
        if endpoint == "examples":
            try:
                seed = int(request.args.get("seed", "0"))
            except ValueError as e:
                raise BadRequest("seed must be an integer") from e
            return self.examples.random(seed)
        model = self._model(args["name"], args.get("version"))
        if endpoint == "status":
            status = {"error_code": "OK", "error_message": ""}
            return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE", "status": status}]}
        if endpoint == "metadata":
            return metadata(model)
        return {"outputs": predict(model, self._json_body(request), self.limits)}

    def _static(self, filename: str) -> wrappers.Response:
        path = (_WEB / filename).resolve()
        if _WEB not in path.parents or not path.is_file() or path.suffix not in _STATIC_TYPES:
            raise BadRequest(f"no such file: {filename}", 404)
        return wrappers.Response(path.read_bytes(), content_type=_STATIC_TYPES[path.suffix])

    def __call__(self, environ, start_response):
        request = wrappers.Request(environ)
        request.max_content_length = self.limits.max_request_bytes
        try:
            if self.upstream and request.path.startswith("/v1/models/"):
                return self._forward(request)(environ, start_response)
            if self.upstream and request.path.rstrip("/") == "/v1/models":
                raise BadRequest("TF Serving lists no models: name one", 404)
            endpoint, args = _ROUTES.bind_to_environ(environ).match()
            result = self._dispatch(request, endpoint, args)
            response = result if isinstance(result, wrappers.Response) else _json_response(result, 200)
        except BadRequest as e:
            response = _json_response({"error": str(e)}, e.status)
        except exceptions.RequestEntityTooLarge:
            limit = self.limits.max_request_bytes
            response = _json_response({"error": f"request body exceeds this server's limit of {limit} bytes"}, 413)
        except exceptions.HTTPException as e:
            response = _json_response({"error": f"{e.name}: {request.method} {request.path}"}, e.code)
        except Exception as e:  # A bug: say so, keep serving, log the traceback.
            logging.exception("Internal error on %s %s", request.method, request.path)
            response = _json_response({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        return response(environ, start_response)


def _json_response(payload, status: int) -> wrappers.Response:
    return wrappers.Response(json.dumps(payload), status=status, content_type="application/json")


def make_server(app_: App, host: str = "127.0.0.1", port: int = 0) -> serving.BaseWSGIServer:
    """A threaded HTTP server for `app_` (port 0: a free port, see `server.port`)."""
    return serving.make_server(host, port, app_, threaded=True)


def define_flags():
    """The command line's flags (defined only when serve runs as a program, so that
    importing this module next to oneshot_tf.main defines nothing twice)."""
    flags.DEFINE_multi_string(
        "export_dir", None, "Model base path (<dir>/<version>/) or folder of them; repeatable. Default: pretrained/."
    )
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 serves other machines too.")
    flags.DEFINE_integer("port", 8501, "Port (TF Serving's REST port by default); 0 picks a free one.")
    flags.DEFINE_string("data_dir", None, "Omniglot for the page's random examples; default as main's.")
    flags.DEFINE_integer("max_num_samples", Limits.max_num_samples, "Cap on num_samples.")
    flags.DEFINE_integer("max_batch", Limits.max_batch, "Cap on the batch of one request.")
    flags.DEFINE_string("upstream", None, "A TF Serving REST base URL to send /v1/models requests to.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from oneshot_tf.data import omniglot

    export_dirs = flags.FLAGS.export_dir or (
        [] if flags.FLAGS.upstream else [pathlib.Path(__file__).resolve().parents[1] / "pretrained"]
    )
    models = load_models(export_dirs)
    try:
        data_dir = flags.FLAGS.data_dir or omniglot.default_data_dir()
    except omniglot.DataError:
        data_dir = None
        logging.warning("No Omniglot data found: the page's random-example button is off (pass --data_dir)")
    limits = Limits(max_batch=flags.FLAGS.max_batch, max_num_samples=flags.FLAGS.max_num_samples)
    server = make_server(
        App(models, limits=limits, data_dir=data_dir, upstream=flags.FLAGS.upstream), flags.FLAGS.host, flags.FLAGS.port
    )
    served = f"the models of {flags.FLAGS.upstream}" if flags.FLAGS.upstream else ", ".join(sorted(models))
    logging.info("Serving %s on http://%s:%d/", served, flags.FLAGS.host, server.port)
    print(f"Serving {served}: open http://{flags.FLAGS.host}:{server.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    define_flags()
    cli.run(main)
