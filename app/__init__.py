"""The TransferRank service: API, jobs, worker backends.

Importing it limits glibc malloc to one arena in this process (``app.core.memory.configure_malloc``):
first thing, before the service's threads -- the job runner's, the encoders', torch's and the
tokenizers' -- allocate, so that the memory a large job frees goes back to the operating system.
The worker processes import it too.
"""
from app.core.memory import configure_malloc as _configure_malloc

_configure_malloc()
