using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>How a ring thread stops: what is in flight is canceled, then the ring closes.</summary>
internal sealed unsafe partial class RingThread
{
    /// <summary>Asks the thread to stop: what is in flight is canceled, then the thread ends and closes the ring.</summary>
    public Task StopAsync()
    {
        _stopRequested = true;
        Post(static _ => { }, null);
        return _exited.Task;
    }

    private void Exit(bool clean)
    {
        _stopping = true;
        // Entries prepared and never submitted die with the ring: the loop can end (nothing in flight)
        // right after a connection's close was prepared. Those descriptors close here, on every exit.
        _ring!.CloseUnsubmittedCloses();
        if (!clean)
        {
            // Past the grace, or after a fault: closing the ring makes the kernel cancel and let go of
            // whatever it still holds, before anything is told it ended.
            _ring.Dispose();
            Thread.Sleep(50);
        }

        // Whatever is still in flight ends as a local abort, so no connection's loop is left waiting on a
        // ring that is gone; their descriptors then close directly.
        var operations = Volatile.Read(ref _operations);
        for (var i = FirstIndex; i < operations.Length; i++)
        {
            if (operations[i] is { InFlight: true } operation)
            {
                _inFlight--;
                _ = operation.OnCompletion(operation.CurrentUserData, -LinuxNative.ECANCELED, 0);
            }
        }

        Interlocked.Exchange(ref _done, 1);
        RunWork(all: true);
        t_current = null;
        _ring!.Dispose();
        // No Post may be writing to the eventfd when it closes (see Post).
        var spin = new SpinWait();
        while (Volatile.Read(ref _posters) != 0)
        {
            spin.SpinOnce();
        }

        LinuxNative.Close(_eventFd);
        NativeMemory.Free(_wakeBuffer);
        _exited.TrySetResult();
    }

    private void DrainAfterExit()
    {
        while (true)
        {
            RunWork(all: true);
            Volatile.Write(ref _draining, 0);
            if (_work.IsEmpty || Interlocked.Exchange(ref _draining, 1) != 0)
            {
                return;
            }
        }
    }
}
