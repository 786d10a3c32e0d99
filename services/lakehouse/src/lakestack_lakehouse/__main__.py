from lakestack_lakehouse.app import main

if __name__ == "__main__":
    main()
