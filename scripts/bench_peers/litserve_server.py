"""LitServe with its batching on, serving the same model: JSON {"npy": base64 .npy} in
(LitServe reads JSON or forms, not raw bodies), {"npy": base64 .npy} of the voxels out.

    python litserve_server.py MODEL_DIR PORT THREADS MAX_BATCH BATCH_TIMEOUT_S
"""
import base64
import io
import sys

import litserve as ls
import numpy as np
import onnxruntime as ort

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
max_batch, batch_timeout = int(sys.argv[4]), float(sys.argv[5])


class Encoder(ls.LitAPI):
    def setup(self, device):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return np.load(io.BytesIO(base64.b64decode(request["npy"])))[0]

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        voxels, _ = self.session.run(None, {"images": x})
        return voxels

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        buf = io.BytesIO()
        np.save(buf, output[None])
        return {"npy": base64.b64encode(buf.getvalue()).decode()}


if __name__ == "__main__":
    api = Encoder(max_batch_size=max_batch, batch_timeout=batch_timeout)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(
        port=port, generate_client_file=False, log_level="warning"
    )
