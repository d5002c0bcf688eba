from sandbox.standins import main

main()
