using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

// How a connection ends. Every transition happens under _closeLock and is recorded once:
//   Open --FIN sent--> FinSent --peer FIN, both loops done--> socket recycled
//   Open --output ended, deferred FIN--> FinDeferred --peer FIN or deferral over--> FinSent
//   Open/FinDeferred/FinSent --abort, error, drain timeout--> Closed (socket closed, never reused)
internal sealed partial class WinsockConnection
{
    // Deadlines are armed with the connection's id: a pooled object ignores an expiry meant for its previous use.
    private static readonly Action<object, long> s_onDrainExpired = static (state, id) => ((WinsockConnection)state).OnDrainExpired(id);
    private static readonly Action<object, long> s_onDeferralExpired = static (state, id) => ((WinsockConnection)state).OnDeferralExpired(id);

    private int _resetSeen;
    private CancellationTokenSource? _connectionClosedSource;
    private bool _connectionClosedFiring;
    private bool _connectionClosedReplaced;
    private CancellationToken _connectionClosedReplacement;

    /// <summary>
    /// The application finished its output: send a FIN now or, with a deferred FIN, once the peer has
    /// closed its side first (the TIME_WAIT is then the peer's) or the deferral is over.
    /// </summary>
    private void EndOutput()
    {
        _outputEnded = true;
        lock (_closeLock)
        {
            if (_closeState != CloseState.Open || _peerReset)
            {
                return;
            }

            if (_factory.DeferFinTimeout is { } deferral)
            {
                if (!_peerFinReceived && !_receiveEnded)
                {
                    _closeState = CloseState.FinDeferred;
                    _deadline.Arm(deferral, s_onDeferralExpired, this, _id);
                    return;
                }

                // The peer's FIN came in before the output ended: it has closed first already.
                SendFinLocked();
                if (_peerFinReceived)
                {
                    _factory.Counters.PeerClosedFirstSeen();
                }

                return;
            }

            SendFinLocked();
        }
    }

    private void OnDeferralExpired(long id)
    {
        lock (_closeLock)
        {
            if (id != _id || _closeState != CloseState.FinDeferred)
            {
                return;
            }

            // Counted after the FIN, with it, so whoever sees the count also sees the graceful close.
            SendFinLocked();
            _factory.Counters.DeferFinTimedOut();
            Logger.DeferFinTimedOut(ConnectionId);
        }
    }

    /// <summary>Sends the FIN, then gives the peer a bounded time to close its side.</summary>
    private void SendFinLocked()
    {
        if (HalfClose.SendFin(Socket) != Interop.WinsockErrorAction.Done)
        {
            // Not connected any more (or the FIN could not be sent): close plainly, never reuse.
            _closeState = CloseState.Closed;
            SocketClose.Close(_socket, abortive: false);
            return;
        }

        _closeState = CloseState.FinSent;
        if (Logger.IsEnabled(LogLevel.Debug))
        {
            // Guarded: the id string is only made for a log that is written.
            Logger.ConnectionWriteFin(ConnectionId);
        }

        _factory.Counters.GracefulClose();
        // No drain to wait for when the peer's FIN is already in (a half-close in progress).
        if (!_receiveEnded && !_peerFinReceived)
        {
            _deadline.Arm(_factory.DrainTimeout, s_onDrainExpired, this, _id);
        }
    }

    private void OnDrainExpired(long id)
    {
        lock (_closeLock)
        {
            if (id != _id || _closeState != CloseState.FinSent || _receiveEnded)
            {
                return;
            }

            // Our FIN is out and everything received was read: a plain close sends nothing more.
            _closeState = CloseState.Closed;
            SocketClose.Close(_socket, abortive: false);
        }

        _factory.Counters.DrainTimeout();
        Logger.DrainTimedOut(ConnectionId);
    }

    /// <summary>An abort or an error: an RST, and the socket is never reused.</summary>
    private void CloseAbortively(ConnectionAbortedException reason)
    {
        lock (_closeLock)
        {
            if (_closeState == CloseState.Closed)
            {
                return;
            }

            _closeState = CloseState.Closed;
            _shutdownReason ??= reason;
            if (_peerReset)
            {
                // The peer already reset: there is nothing left to abort, only a handle to close.
                SocketClose.Close(_socket, abortive: false);
                return;
            }

            SocketClose.Close(_socket, abortive: true);
        }

        Logger.ConnectionWriteRst(ConnectionId, reason.Message);
        _factory.Counters.AbortiveClose();
    }

    private void OnPeerFin()
    {
        if (Logger.IsEnabled(LogLevel.Debug))
        {
            Logger.ConnectionReadFin(ConnectionId);
        }

        lock (_closeLock)
        {
            _peerFinReceived = true;

            // The peer closed first while our FIN waited for it: send it now. If the deferral has just
            // expired instead, its callback sends the FIN.
            if (_closeState == CloseState.FinDeferred && _deadline.TryDisarm())
            {
                SendFinLocked();
                _factory.Counters.PeerClosedFirstSeen();
            }
        }
    }

    private void OnPeerReset()
    {
        _peerReset = true;
        if (Interlocked.Exchange(ref _resetSeen, 1) == 0)
        {
            _factory.Counters.ConnectionReset();
            Logger.ConnectionReset(ConnectionId);
        }
    }

    /// <summary>Both loops are done: the socket goes to the recycler after a clean FIN both ways, else it is closed.</summary>
    private void HandOffSocket()
    {
        bool recycle;
        lock (_closeLock)
        {
            recycle = _closeState == CloseState.FinSent && _peerFinReceived && !_peerReset;
            _closeState = CloseState.Closed;
        }

        if (_reusable is null)
        {
            _socket.Dispose();
        }
        else if (recycle)
        {
            _factory.Recycler.Recycle(_reusable);
        }
        else
        {
            _reusable.Dispose();
        }
    }

    /// <summary>
    /// Made when first asked for: a connection nobody watches never allocates a token source, and its end
    /// needs no thread pool hop. Asked for after the end, it is already canceled.
    /// </summary>
    public override CancellationToken ConnectionClosed
    {
        get
        {
            lock (_closeLock)
            {
                if (_connectionClosedReplaced)
                {
                    return _connectionClosedReplacement;
                }

                return _connectionClosedFiring
                    ? new CancellationToken(canceled: true)
                    : (_connectionClosedSource ??= new CancellationTokenSource()).Token;
            }
        }

        set
        {
            lock (_closeLock)
            {
                _connectionClosedReplacement = value;
                _connectionClosedReplaced = true;
            }
        }
    }

    private void ResetConnectionClosed()
    {
        _connectionClosedSource?.Dispose();
        _connectionClosedSource = null;
        _connectionClosedFiring = false;
        _connectionClosedReplaced = false;
        _connectionClosedReplacement = default;
    }

    /// <summary>
    /// Cancels ConnectionClosed, running its callbacks right here. The caller is the receive loop at its
    /// end, always on a thread pool thread (never an I/O completion thread, never inside an application
    /// call), with nothing left to do until the callbacks are done; a hop to another thread pool work item
    /// would only cost.
    /// </summary>
    private void FireConnectionClosed()
    {
        CancellationTokenSource? source;
        lock (_closeLock)
        {
            _connectionClosedFiring = true;
            source = _connectionClosedSource;
        }

        try
        {
            // Null when nobody asked for the token: nothing to cancel.
            source?.Cancel();
        }
        catch (Exception ex)
        {
            Logger.ConnectionClosedCallbackFailed(ConnectionId, ex);
        }
    }
}
