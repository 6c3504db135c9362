"""The server a user writes instead of vcl-serve: FastAPI + onnxruntime, one request,
one inference (no batching), a .npy body in and out, as in scripts/bench_serve.sh.

    python fastapi_server.py MODEL_DIR PORT THREADS
"""
import io
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
session = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    x = np.load(io.BytesIO(await request.body()))
    # Off the event loop, as FastAPI does for a plain `def` endpoint.
    from starlette.concurrency import run_in_threadpool

    voxels, _ = await run_in_threadpool(session.run, None, {"images": x})
    buf = io.BytesIO()
    np.save(buf, voxels)
    return Response(buf.getvalue(), media_type="application/x-npy")


@app.get("/health")
def health():
    return {"ok": True}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
