"""`helm test`: one OpenAI completion from the service, with the standard library alone.

URL and MODEL come from the environment; exits 0 when the service answers 200 with a choice,
else 1 with what it answered."""
import json
import os
import sys
import urllib.error
import urllib.request

url = os.environ["URL"].rstrip("/") + "/openai/v1/completions"
body = {"model": os.environ["MODEL"], "prompt": "Hello", "max_tokens": 4}
request = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
except urllib.error.HTTPError as error:
    sys.exit(f"{url}: HTTP {error.code}: {error.read()[:500]!r}")
except (OSError, ValueError) as error:
    sys.exit(f"{url}: {error}")
if not answer.get("choices"):
    sys.exit(f"{url}: no choices in {json.dumps(answer)[:500]}")
print(f"{url}: {answer['choices'][0].get('text')!r}, usage {answer.get('usage')}")
