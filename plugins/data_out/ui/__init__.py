"""Audience health inside the Airflow UI: an overview page, a Health tab per audience DAG, a member lookup.

Served by the Data Out plugin's FastAPI app on the api-server (``data_out_plugin.py``) and shown in
Airflow's UI through ``external_views``. Every page asks Airflow's auth manager for the signed-in user
(``auth.py``); the pages read the state database through ``queries.py`` only. See docs/ui.md.
"""
