from services.gateway.service import run
from shared.lifecycle import main

main("gateway", run)
