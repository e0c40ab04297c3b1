"""What the root locustfile.py uses besides its user classes and load shape (Locust's "common/" package).

  settings  the LOCUST_* environment variables and what the command line asks for
  bodies    the sample images as pre-encoded multipart request bodies
  checks    response checks: a 200 with a wrong body is a failure
  records   what a run records (model-version timeline, job events, per-step and per-phase figures) and its files
  admin     the AdminUser's job: start one retrain or upload, poll it, cancel it if the run ends first
  gate      the pass/fail gate on failure ratio and p95, and the final figures
  hooks     the Locust event listeners that tie these together, in one process or a master and its workers
  generator the Locust processes' own CPU, sampled by benchmarks/loadtest.py: was the client the limit?

Only `admin` and `hooks` import Locust (which gevent-patches the process on import); the rest can be
imported by benchmarks/loadtest.py and the tests.
"""

import logging

log = logging.getLogger("digitlab.locust")
