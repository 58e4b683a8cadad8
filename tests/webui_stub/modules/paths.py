import os
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = os.environ.get("FREEDIFF_STUB_DATA", tempfile.mkdtemp(prefix="freediff-stub-data-"))
models_path = os.path.join(data_path, "models")
