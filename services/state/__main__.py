from services.state.service import run
from shared.lifecycle import main

main("state", run)
