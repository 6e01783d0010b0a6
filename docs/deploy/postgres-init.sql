-- One PostgreSQL server, one database per component (compose.yaml creates `mlflow` as POSTGRES_DB).
CREATE DATABASE prefect;
CREATE DATABASE kairos;  -- the candle store of every worker (KAIROS_STORE_URL)
