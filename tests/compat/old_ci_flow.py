"""Run by tests/compat/test_e2b_old_sdk.py with the older SDKs' venv: e2b-code-interpreter 2.0.0
(on e2b 2.20.0) against corral's code interpreter. Prints one "ok <step>" line per step."""

import base64

from e2b_code_interpreter import Sandbox

sbx = Sandbox.create(timeout=300)  # the SDK's default template: code-interpreter-v1
try:
    sbx.run_code("x = 41")
    assert sbx.run_code("x + 1").text == "42"
    print("ok state")
    frame = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert "<table" in (frame.results[0].html or "")
    print("ok dataframe")
    chart = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    assert base64.b64decode(next(r.png for r in chart.results if r.png)).startswith(b"\x89PNG")
    print("ok chart")
    ctx = sbx.create_code_context()
    assert sbx.run_code("x", context=ctx).error.name == "NameError"
    print("ok context")
    failed = sbx.run_code("1 / 0")
    assert failed.error.name == "ZeroDivisionError"
    print("ok error")
finally:
    sbx.kill()
print("ok kill")
