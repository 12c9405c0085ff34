"""Device certificate lifecycle after enrollment: revocation (revocation.py), the CRL the broker reads
(crl.py), renewal over the authenticated channel (renewal.py) and the broker-level kick (takeover.py).

Issuing and signing stay in fleet_server/pki.py; enrollment in fleet_server/enrollment.py.
"""
