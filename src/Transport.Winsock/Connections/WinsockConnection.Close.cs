using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging;
using Transport.Winsock.Diagnostics;
using Transport.Winsock.Teardown;

namespace Transport.Winsock.Connections;

// How a connection ends. Every transition happens under _closeLock and is recorded once:
//   Open --FIN sent--> FinSent --peer FIN, both loops done--> handed off (below)
//   Open --output ended, deferred FIN--> FinDeferred --peer FIN or deferral over--> FinSent
//   Open/FinDeferred --output ended after the peer's FIN, socket not to be recycled--> FinWithClose
//   Open/FinDeferred/FinSent/FinWithClose --abort, error, drain timeout--> Closed (closed, never reused)
// Who closed first decides the socket's fate at the hand-off. A passive close (the peer's FIN came in
// before ours went out) leaves no TIME_WAIT here: its socket is recycled. An active close (our FIN went
// first) leaves this side in TIME_WAIT, and a reuse disconnect would wait that out (minutes on Windows):
// its socket is closed at once, gracefully, and counted as a TIME_WAIT close, never as a failed recycle.
internal sealed partial class WinsockConnection
{
    // Deadlines are armed with the connection's id: a pooled object ignores an expiry meant for its previous use.
    private static readonly Action<object, long> s_onDrainExpired = static (state, id) => ((WinsockConnection)state).OnDrainExpired(id);
    private static readonly Action<object, long> s_onDeferralExpired = static (state, id) => ((WinsockConnection)state).OnDeferralExpired(id);
    private static readonly Action<object, long> s_onEndExpired = static (state, id) => ((WinsockConnection)state).OnEndExpired(id);

    private int _resetSeen;
    private bool _handedOff;
    private bool _passiveClose;
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
                    Deadline.Arm(deferral, s_onDeferralExpired, this, _id);
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

    /// <summary>
    /// Sends the FIN, then gives the peer a bounded time to close its side. Records who closed first: a
    /// FIN sent after the peer's makes this a passive close.
    /// </summary>
    private void SendFinLocked()
    {
        _passiveClose = _peerFinReceived;
        if (_peerFinReceived && !WillRecycle)
        {
            // The peer has closed and this socket is only going to be closed, right after: the close
            // carries our FIN (everything received has been read, so it is a FIN, not an RST). One system
            // call fewer than shutdown + close, and on Linux no wake-up for the FIN's ACK on a socket
            // nothing waits on. Counted and logged at the hand-off, once the FIN is out.
            _closeState = CloseState.FinWithClose;
            return;
        }

        if (_io.SendFin() != Interop.WinsockErrorAction.Done)
        {
            // Not connected any more (or the FIN could not be sent): close plainly, never reuse.
            _closeState = CloseState.Closed;
            _io.Close(abortive: false);
            return;
        }

        _closeState = CloseState.FinSent;
        LogFinSent();
        _factory.Counters.GracefulClose();
        // No drain to wait for when the peer's FIN is already in (a half-close in progress).
        if (!_receiveEnded && !_peerFinReceived)
        {
            Deadline.Arm(_factory.DrainTimeout, s_onDrainExpired, this, _id);
        }
    }

    /// <summary>Whether this connection's socket goes to the recycler after a passive close.</summary>
    private bool WillRecycle => _io.CanRecycle;

    private void LogFinSent()
    {
        if (Logger.IsEnabled(LogLevel.Debug))
        {
            // Guarded: the id string is only made for a log that is written.
            Logger.ConnectionWriteFin(ConnectionId);
        }
    }

    /// <summary>The factory's EndTimeout ran out with the output still unsent (the peer stopped reading): abort.</summary>
    private void OnEndExpired(long id)
    {
        lock (_closeLock)
        {
            if (id != _id || _closeState != CloseState.Open)
            {
                return;
            }

            CloseAbortively(new ConnectionAbortedException($"The connection's output was not sent within {_factory.EndTimeout} of its dispose: the peer stopped reading."));
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
            _io.Close(abortive: false);
        }

        _factory.Counters.DrainTimeout();
        Logger.DrainTimedOut(ConnectionId);
    }

    /// <summary>
    /// An abort or an error: an RST (under Kestrel's FinOnError switch a FIN, as Kestrel's Sockets transport
    /// then sends), and the socket is never reused.
    /// </summary>
    private void CloseAbortively(ConnectionAbortedException reason)
    {
        var fin = _factory.FinOnError;
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
                _io.Close(abortive: false);
                return;
            }

            if (fin)
            {
                // The shutdown first, so that .NET closes gracefully whatever is pending (see HalfClose).
                _io.SendFin();
            }

            _io.Close(abortive: !fin);
        }

        if (fin)
        {
            LogFinSent();
        }
        else
        {
            Logger.ConnectionWriteRst(ConnectionId, reason.Message);
        }

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

            // The peer closed first while our FIN waited for it: send it now. A deferral that expired at
            // this very moment finds the FIN sent when its callback gets the lock, and does nothing: the
            // peer's FIN was first, so this is a passive close, and counted as one.
            if (_closeState == CloseState.FinDeferred)
            {
                _deadline?.TryDisarm();
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

    /// <summary>
    /// Both loops are done. After a clean FIN both ways, a passive close's socket goes to the recycler; an
    /// active close's is in TIME_WAIT and is closed (nothing more goes on the wire), as is every socket of
    /// a connection that did not end cleanly. Returns whether the socket was closed (false: recycled).
    /// </summary>
    private bool HandOffSocket()
    {
        CloseState state;
        bool clean;
        bool recycle;
        lock (_closeLock)
        {
            state = _closeState;
            clean = state is (CloseState.FinSent or CloseState.FinWithClose) && _peerFinReceived && !_peerReset;
            _closeState = CloseState.Closed;
            // Decided under the lock that IConnectionSocketFeature takes: a socket handed to the application
            // is never recycled, and none is handed out from here on.
            recycle = clean && _passiveClose && state == CloseState.FinSent && _io.CanRecycle;
            _handedOff = true;
        }

        _io.Release(recycle);
        if (recycle)
        {
            return false;
        }

        if (state == CloseState.FinWithClose)
        {
            LogFinSent();
            _factory.Counters.GracefulClose();
        }

        if (clean && !_passiveClose)
        {
            _factory.Counters.TimeWaitClose();
        }

        return true;
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

    private void CompleteInputAndCancelConnectionClosed(Exception? inputError, CancellationTokenSource source, string connectionId)
    {
        try
        {
            source.Cancel();
        }
        catch (Exception ex)
        {
            Logger.ConnectionClosedCallbackFailed(connectionId, ex);
        }
        finally
        {
            _input.CompleteWriter(inputError);
            source.Dispose();
            OnLoopDone();
        }
    }

    private void ResetConnectionClosed()
    {
        lock (_closeLock)
        {
            ResetConnectionClosedLocked();
        }
    }

    private void ResetConnectionClosedLocked()
    {
        _connectionClosedSource?.Dispose();
        _connectionClosedSource = null;
        _connectionClosedFiring = false;
        _connectionClosedReplaced = false;
        _connectionClosedReplacement = default;
    }

    /// <summary>
    /// Cancels ConnectionClosed, then completes the input (with the receive side's error, if any), on one
    /// thread, one right after the other. The caller is the receive loop at its end, with nothing left to
    /// do until the callbacks are done. On the sockets engine that is a thread pool thread (never an I/O
    /// completion thread, never inside an application call), so both happen right here: a hop to another
    /// work item would only cost. On an engine thread (an io_uring ring), where no application code may
    /// run, both go to one thread pool work item, as Kestrel's Sockets transport sends its callbacks there;
    /// the source then belongs to that work item, which disposes it.
    /// <para>
    /// Why the callbacks come first: completing the input schedules the application's pending read on the
    /// thread pool, where another thread can run it at once. A read that fails with a reset before Kestrel
    /// has seen the connection close is taken for the application's own failure: Kestrel logs the
    /// request's ConnectionResetException as an ApplicationError and, believing the connection alive,
    /// tries to drain the request body, whose reader its failed read left "in progress"
    /// (RequestBodyDrainBodyReaderInvalidState), both at Error. Completed on the ring with the callbacks
    /// queued after it, that was dozens in a few hundred clients that close mid-upload; completed just
    /// before the callbacks on the same thread, about one run of 200 clients in ten still lost the race.
    /// After the callbacks, Kestrel has marked the request aborted before the read can fail, and the reset
    /// is logged at Debug. (Kestrel's own Sockets transport completes the input and queues the callbacks
    /// separately, and loses that race now and then.)
    /// </para>
    /// </summary>
    /// <returns>True when both went to a work item, which then ends the receive loop's turn (<see cref="OnLoopDone"/>).</returns>
    private bool CompleteInputAndFireConnectionClosed(Exception? inputError)
    {
        CancellationTokenSource? source;
        var hop = _io.CompletesOnEngineThread;
        lock (_closeLock)
        {
            _connectionClosedFiring = true;
            source = _connectionClosedSource;
            if (hop && source is not null)
            {
                // Not disposed by this object's reset for its next connection: the work item owns it.
                _connectionClosedSource = null;
            }
        }

        if (hop && source is not null)
        {
            ThreadPool.UnsafeQueueUserWorkItem(
                static state => state.Connection.CompleteInputAndCancelConnectionClosed(state.Error, state.Source, state.Id),
                (Connection: this, Error: inputError, Source: source, Id: ConnectionId),
                preferLocal: false);
            return true;
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
        finally
        {
            _input.CompleteWriter(inputError);
        }

        return false;
    }
}
