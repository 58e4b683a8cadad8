"""/sdapi/v1/txt2img and /sdapi/v1/img2img with v1.10.1's script-arg mapping, middleware stack and error answers."""

import base64
import io
from contextlib import closing

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from PIL import Image

from modules import processing

P_FIELDS = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size", "n_iter",
            "sampler_name", "denoising_strength", "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
            "hr_resize_x", "hr_resize_y", "hr_sampler_name", "override_settings"}


def decode_base64_to_image(encoding):
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        return Image.open(io.BytesIO(base64.b64decode(encoding)))
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def api_middleware(app: FastAPI):
    """v1.10.1's middleware and handlers, in its order: two ``BaseHTTPMiddleware`` layers (under anyio 4 they
    wrap an exception escaping the endpoint in an ``ExceptionGroup``), an ``Exception`` handler (starlette's
    outermost ``ServerErrorMiddleware``) and an ``HTTPException`` handler (FastAPI's innermost
    ``ExceptionMiddleware``, at the endpoint)."""

    @app.middleware("http")
    async def log_and_time(req: Request, call_next):
        res = await call_next(req)
        res.headers["X-Process-Time"] = "0"
        return res

    def handle_exception(request: Request, e: Exception):
        err = {"error": type(e).__name__, "detail": vars(e).get('detail', ''), "body": vars(e).get('body', ''), "errors": str(e)}
        return JSONResponse(status_code=vars(e).get('status_code', 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)


class Api:
    def __init__(self, app: FastAPI, runners: dict, default_args: dict):
        self.app = app
        self.runners = runners
        self.default_args = default_args
        api_middleware(app)
        # plain (sync) endpoints, as the WebUI's: FastAPI runs them in its thread pool
        app.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"])
        app.add_api_route("/sdapi/v1/img2img", self.img2imgapi, methods=["POST"])

    def get_script(self, script_name, script_runner):
        for script in script_runner.alwayson_scripts:
            if script_name.lower() == script.title().lower():
                return script
        return None

    def init_script_args(self, request, default_script_args, script_runner):
        script_args = default_script_args.copy()
        for name, entry in (request.get("alwayson_scripts") or {}).items():
            script = self.get_script(name, script_runner)
            if script is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            if "args" in entry:
                for idx in range(0, min(script.args_to - script.args_from, len(entry["args"]))):
                    script_args[script.args_from + idx] = entry["args"][idx]
        return script_args

    def _run(self, tab, request, cls, **extra):
        runner = self.runners[tab]
        script_args = self.init_script_args(request, self.default_args[tab], runner)
        fields = {k: v for k, v in request.items() if k in P_FIELDS}
        p = cls(scripts=runner, script_args=script_args, **fields, **extra)
        p.is_api = True  # as v1.10.1's text2imgapi / img2imgapi
        with closing(p):
            processed = processing.process_images(p)
        return {"images": [encode_pil_to_base64(im) for im in processed.images], "parameters": request, "info": processed.js()}

    def text2imgapi(self, body: dict = Body(...)):
        return self._run("txt2img", body, processing.StableDiffusionProcessingTxt2Img)

    def img2imgapi(self, body: dict = Body(...)):
        images = [decode_base64_to_image(x) for x in body.get("init_images") or []]
        if not images:
            raise HTTPException(status_code=404, detail="Init image not found")
        mask = decode_base64_to_image(body["mask"]) if body.get("mask") else None
        return self._run("img2img", body, processing.StableDiffusionProcessingImg2Img, init_images=images, mask=mask)
