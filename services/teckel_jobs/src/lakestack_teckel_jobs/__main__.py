from lakestack_teckel_jobs.app import main

if __name__ == "__main__":
    main()
