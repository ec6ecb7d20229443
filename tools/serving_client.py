"""Sends a support set to a running TF Serving (or `python -m oneshot_tf.serve`) and
writes the returned samples as a PNG.

  python tools/serving_client.py --server=localhost:8501 --model=iwae \
      --support=a.png,b.png,c.png --num_samples=8 --out=samples.png
  python tools/serving_client.py --protocol=grpc --server=localhost:8500 ...

Support images are PNGs in Omniglot's upstream polarity (dark ink on white), any
size: they are turned into 28x28 with ink = 1.0 as the serving contract wants.
REST needs nothing beyond TensorFlow; gRPC needs `pip install tensorflow-serving-api`.
Also prints log p(support[-1] | support[:-1]) from the `log_prob` signature.
"""

import json
import pathlib
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf
from absl import app, flags

_SERVER = flags.DEFINE_string("server", "localhost:8501", "host:port of the REST (8501) or gRPC (8500) API.")
_PROTOCOL = flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "API to call.")
_MODEL = flags.DEFINE_string("model", "iwae", "Model name the server serves.")
_SUPPORT = flags.DEFINE_list("support", [], "Comma-separated PNG files; may be empty (0 shots).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "New drawings to ask for.")
_SEED = flags.DEFINE_list("seed", ["0", "0"], "Two integers.")
_OUT = flags.DEFINE_string("out", "samples.png", "Where to write the samples.")
_SCORE_SAMPLES = flags.DEFINE_integer("score_samples", 1000, "Importance samples K for the printed log p.")


def load_support(paths) -> np.ndarray:
    """PNG files -> float32 [shots, 28, 28, 1], ink = 1.0."""
    images = []
    for path in paths:
        image = tf.cast(tf.io.decode_png(pathlib.Path(path).read_bytes(), channels=1), tf.float32) / 255.0
        images.append(tf.image.resize(1.0 - image, [28, 28], method="area").numpy() >= 0.5)
    return np.asarray(images, np.float32).reshape(-1, 28, 28, 1)


def predict_rest(signature: str, inputs: dict) -> dict:
    url = f"http://{_SERVER.value}/v1/models/{_MODEL.value}:predict"
    body = json.dumps({"signature_name": signature, "inputs": {k: v.tolist() for k, v in inputs.items()}})
    request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"}, method="POST")
    try:
        outputs = json.loads(urllib.request.urlopen(request, timeout=120).read())["outputs"]
    except urllib.error.HTTPError as e:
        raise SystemExit(f"error: {url} answered {e.code}: {e.read().decode(errors='replace')}") from None
    return (
        {k: np.asarray(v) for k, v in outputs.items()}
        if isinstance(outputs, dict)
        else {"log_prob": np.asarray(outputs)}
    )


def predict_grpc(signature: str, inputs: dict) -> dict:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(_SERVER.value))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = _MODEL.value
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=120)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def main(argv):
    del argv
    predict = predict_rest if _PROTOCOL.value == "rest" else predict_grpc
    support = load_support(_SUPPORT.value)
    seed = np.asarray([int(s) for s in _SEED.value], np.int32)
    batch = np.repeat(support[None], _NUM_SAMPLES.value, axis=0)  # [num_samples, shots, 28, 28, 1]
    probs = predict("sample", {"support": batch, "seed": seed})["probs"]
    row = (
        np.concatenate([*support[..., 0], np.full((28, 4), 0.5), *probs[..., 0]], axis=1)
        if len(support)
        else np.concatenate(list(probs[..., 0]), axis=1)
    )
    png = tf.io.encode_png(tf.cast(np.round((1.0 - row)[..., None] * 255), tf.uint8))
    pathlib.Path(_OUT.value).write_bytes(png.numpy())
    print(f"wrote {_OUT.value}: {len(support)} support images | {_NUM_SAMPLES.value} samples")
    if len(support) >= 1:
        scored = predict(
            "log_prob",
            {
                "support": support[None, :-1],
                "query": support[None, -1],
                "num_samples": np.int32(_SCORE_SAMPLES.value),
                "seed": seed,
            },
        )["log_prob"]
        print(f"log p(support[-1] | support[:-1]) = {float(np.ravel(scored)[0]):.2f} nats")


if __name__ == "__main__":
    app.run(main)
