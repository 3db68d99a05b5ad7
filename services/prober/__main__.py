from services.prober.service import run
from shared.lifecycle import main

main("prober", run)
